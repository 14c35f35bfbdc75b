//! The cluster lab (`chaos-ebpf lab up/status/down`): N network namespaces
//! (`chaos-cluster-n1`..) on one bridge in the root namespace (`chaos-lab-br0`), each
//! running an etcd member with client and peer TLS, and Prometheus in the root namespace
//! scraping them. Everything it creates is recorded in /run/chaos-ebpf/lab/state.json
//! before it exists, so `lab down` (and a `lab up` that fails or is interrupted) removes
//! exactly that, and then verifies that nothing is left.
//!
//! The namespace prefix is not `chaos-lab-`: `chaos-ebpf cleanup` removes namespaces
//! with that prefix (the scenario lab's), and must not take a running cluster lab's.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr},
    os::unix::{fs::DirBuilderExt, fs::MetadataExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};
use chaos_datapath::{
    error::Error,
    netns::{self, Netns},
};
use serde::{Deserialize, Serialize};

use crate::{certs, etcd, prometheus, surge};

pub const STATE_DIR: &str = "/run/chaos-ebpf/lab";
pub const NETNS_PREFIX: &str = "chaos-cluster-";
pub const BRIDGE: &str = "chaos-lab-br0";
pub const MAX_NODES: u32 = 9;
pub const DEFAULT_SUBNET: &str = "198.51.100.0/26";
/// The bridge's host number in the /26 (the last usable one); members are .1...
const BRIDGE_HOST: u32 = 62;
/// How long `lab up` waits for the cluster to be healthy and Prometheus ready.
const UP_TIMEOUT: Duration = Duration::from_secs(60);
/// SIGTERM, then this long, then SIGKILL.
const GRACE: Duration = Duration::from_secs(5);
/// Where each member's workload node (`chaos-lab-node`) serves /health, /members and
/// /metrics, on the member's address.
pub const WORKLOAD_PORT: u16 = 9100;
/// The workload's write rate: enough to see a gap of 50 ms, little enough for 9 nodes on
/// 2 cores.
pub const WORKLOAD_WRITE_RATE: &str = "20/s";
/// The workload's binary, looked up next to the running chaos-ebpf.
pub const NODE_BINARY: &str = "chaos-lab-node";

fn state_file(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

/// One line, at most a few hundred characters, of text from elsewhere.
pub fn short(text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() > 200 {
        format!("{}...", line.chars().take(200).collect::<String>())
    } else {
        line
    }
}

/// A /26 inside the lab ranges of the address plan: 198.51.100.0/24 (the lab's,
/// 198.51.100.0/26 by default) or 198.18.0.0/15 (the benchmarking range).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    base: Ipv4Addr,
}

impl Subnet {
    pub const PREFIX: u8 = 26;

    pub fn parse(text: &str) -> Result<Subnet, Error> {
        let fix = "give a /26 inside 198.51.100.0/24 or 198.18.0.0/15, such as 198.51.100.0/26 or 198.18.0.64/26";
        let bad = |why: &str| Error::unsupported(format!("--subnet {}: {why}", short(text)), fix);
        let (addr, len) = text.split_once('/').ok_or_else(|| bad("not ADDRESS/26"))?;
        let base: Ipv4Addr = addr.parse().map_err(|_| bad("not an IPv4 address"))?;
        if len != "26" {
            return Err(bad("the lab needs a /26 (62 addresses)"));
        }
        if u32::from(base) & 63 != 0 {
            return Err(bad("not the start of a /26 (the last number is a multiple of 64)"));
        }
        let inside = |net: Ipv4Addr, prefix: u32| (u32::from(base) ^ u32::from(net)) >> (32 - prefix) == 0;
        if !inside(Ipv4Addr::new(198, 51, 100, 0), 24) && !inside(Ipv4Addr::new(198, 18, 0, 0), 15) {
            return Err(bad("outside the lab ranges"));
        }
        Ok(Subnet { base })
    }

    pub fn member(&self, index: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + index)
    }

    pub fn bridge(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + BRIDGE_HOST)
    }

    /// Whether `net/prefix` shares an address with this subnet.
    pub fn overlaps(&self, net: Ipv4Addr, prefix: u8) -> bool {
        let common = u32::from(prefix.min(Self::PREFIX));
        if common == 0 {
            return true;
        }
        (u32::from(self.base) ^ u32::from(net)) >> (32 - common) == 0
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, Self::PREFIX)
    }
}

/// A process the lab started, with its start time (clock ticks since boot, from
/// /proc/PID/stat) so that a reused pid is never taken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proc {
    pub pid: u32,
    pub start_time: u64,
}

fn start_time_of(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

impl Proc {
    pub(crate) fn of(pid: u32) -> Option<Proc> {
        Some(Proc { pid, start_time: start_time_of(pid)? })
    }

    /// The same process is still there (and not a zombie).
    pub fn alive(&self) -> bool {
        start_time_of(self.pid) == Some(self.start_time) && !is_zombie(self.pid)
    }

    pub(crate) fn signal(&self, signal: i32) {
        if self.alive() {
            // SAFETY: kill(2) has no memory preconditions; the start time was checked just now.
            unsafe { libc::kill(self.pid as i32, signal) };
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub netns: String,
    /// The root-namespace end of its veth (a port of the bridge).
    pub veth: String,
    pub ip: Ipv4Addr,
    pub dir: PathBuf,
    pub process: Option<Proc>,
}

impl Member {
    pub fn client_url(&self) -> String {
        etcd::client_url(self.ip)
    }
}

/// A member's workload node: `chaos-lab-node` in the member's namespace, named like it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Workload {
    pub name: String,
    pub netns: String,
    pub listen: SocketAddr,
    pub journal: PathBuf,
    pub log: PathBuf,
    pub process: Option<Proc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrometheusState {
    pub port: u16,
    pub dir: PathBuf,
    pub process: Option<Proc>,
}

/// Everything a lab created, recorded before it was created.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub nodes: u32,
    pub subnet: String,
    pub started_unix: u64,
    /// The `lab up` process; `complete` is set once the cluster was healthy.
    pub owner: Option<Proc>,
    pub complete: bool,
    pub dir: PathBuf,
    pub bridge: Option<String>,
    pub bridge_address: Option<String>,
    pub members: Vec<Member>,
    pub certs: Option<certs::LabCerts>,
    pub prometheus: Option<PrometheusState>,
    /// One per member, started after the members.
    #[serde(default)]
    pub workloads: Vec<Workload>,
}

impl State {
    pub(crate) fn save(&self) -> Result<()> {
        let path = state_file(&self.dir);
        let tmp = self.dir.join("state.json.tmp");
        fs::write(&tmp, serde_json::to_vec_pretty(self)?).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// Every member's client URL, `first`'s first (a node talks to its own member first).
    pub fn endpoints_from(&self, first: &str) -> Vec<String> {
        let mut endpoints = self.endpoints();
        if let Some(at) = self.members.iter().position(|m| m.name == first) {
            endpoints.rotate_left(at);
        }
        endpoints
    }

    /// The Prometheus file_sd targets: the workload nodes and `extra` (surge nodes).
    pub(crate) fn write_node_targets(&self, extra: &[(String, SocketAddr)]) -> Result<()> {
        let Some(prom) = &self.prometheus else { return Ok(()) };
        let mut targets: Vec<(String, SocketAddr)> =
            self.workloads.iter().map(|w| (w.name.clone(), w.listen)).collect();
        targets.extend_from_slice(extra);
        prometheus::write_nodes_file(&prometheus::nodes_file(&prom.dir), &targets)
    }
}

/// The workload's binary next to the running executable (`chaos-ebpf`; for a test
/// executable in cargo's `deps/`, the directory above it).
pub fn node_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the running executable")?;
    let dir = exe.parent().unwrap_or(Path::new("/"));
    let mut candidates = vec![dir.join(NODE_BINARY)];
    if dir.file_name().is_some_and(|n| n == "deps") {
        candidates.extend(dir.parent().map(|d| d.join(NODE_BINARY)));
    }
    candidates.iter().find(|c| c.is_file()).cloned().ok_or_else(|| {
        Error::unsupported(
            format!("the lab's workload {NODE_BINARY} is not next to {} (looked for {})", exe.display(), candidates[0].display()),
            "build it with the same profile (cargo build --release -p chaos-lab --bin chaos-lab-node) or install it in the same directory as chaos-ebpf",
        )
        .into()
    })
}

/// The command line of a workload node named `name` serving on `listen`, talking to
/// `endpoints` (its own member first) with the lab's CA and client certificate.
pub(crate) fn node_command(
    binary: &Path,
    name: &str,
    endpoints: &[String],
    certs: &certs::LabCerts,
    listen: SocketAddr,
    journal: Option<&Path>,
) -> Command {
    let mut cmd = Command::new(binary);
    cmd.arg("--name").arg(name);
    etcd_client_args(&mut cmd, endpoints, certs)
        .arg("--listen")
        .arg(listen.to_string())
        .arg("--write-rate")
        .arg(WORKLOAD_WRITE_RATE);
    if let Some(journal) = journal {
        cmd.arg("--journal").arg(journal);
    }
    cmd
}

/// `chaos-lab-node`'s etcd flags: the endpoints, the lab's CA and client certificate.
pub(crate) fn etcd_client_args<'a>(
    cmd: &'a mut Command,
    endpoints: &[String],
    certs: &certs::LabCerts,
) -> &'a mut Command {
    cmd.arg("--etcd")
        .arg(endpoints.join(","))
        .arg("--cacert")
        .arg(&certs.ca)
        .arg("--cert")
        .arg(&certs.client.cert)
        .arg("--key")
        .arg(&certs.client.key)
}

/// Running `chaos-lab-node` processes of the lab in `state_dir` (their command line names
/// a file in it: the lab's CA), with their `--name`, whether or not a state records them.
pub(crate) fn node_processes(state_dir: &Path) -> Vec<(String, Proc)> {
    let dir = state_dir.display().to_string();
    let own = std::process::id();
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid == own {
            continue;
        }
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        let is_node = args.first().is_some_and(|a| a.ends_with(NODE_BINARY));
        if !is_node || !args.iter().any(|a| a.starts_with(&format!("{dir}/"))) {
            continue;
        }
        let name = args.iter().skip_while(|a| *a != "--name").nth(1).cloned().unwrap_or_default();
        if let Some(proc) = Proc::of(pid).filter(Proc::alive) {
            found.push((name, proc));
        }
    }
    found
}

/// The lab's state, if one is up (or was left by a crash): `Err` when the state
/// directory exists but its state file cannot be read.
pub fn load(dir: &Path) -> Result<Option<State>> {
    if !dir.exists() {
        return Ok(None);
    }
    if let Some(light) = crate::hyper::load(dir).unwrap_or(None) {
        return Err(Error::unsupported(
            format!("the lab up here is a light-node lab ({} echo nodes), not the etcd lab", light.nodes),
            "`chaos-ebpf lab down` first, then `chaos-ebpf lab up`",
        )
        .into());
    }
    let path = state_file(dir);
    let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display()))?))
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output().context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), short(&String::from_utf8_lossy(&out.stderr)));
    }
    Ok(())
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// Addresses and routes of the root namespace that overlap `subnet`, one line each
/// (default routes do not count: they cover every range).
pub fn collisions(subnet: Subnet) -> Result<Vec<String>> {
    let mut found = Vec::new();
    let out = Command::new("ip").args(["-j", "-4", "addr", "show"]).output().context("running ip -j addr show")?;
    let links: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).context("reading ip -j addr show")?;
    for link in &links {
        for addr in link["addr_info"].as_array().into_iter().flatten() {
            let (Some(local), Some(len)) = (addr["local"].as_str(), addr["prefixlen"].as_u64()) else { continue };
            if let Ok(local) = local.parse::<Ipv4Addr>() {
                if subnet.overlaps(local, len as u8) {
                    found.push(format!("address {local}/{len} on {}", link["ifname"].as_str().unwrap_or("?")));
                }
            }
        }
    }
    let out =
        Command::new("ip").args(["-j", "-4", "route", "show", "table", "all"]).output().context("running ip route")?;
    let routes: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).context("reading ip -j route show")?;
    for route in &routes {
        let Some(dst) = route["dst"].as_str() else { continue };
        if dst == "default" {
            continue;
        }
        let (net, len) = dst.split_once('/').unwrap_or((dst, "32"));
        let (Ok(net), Ok(len)) = (net.parse::<Ipv4Addr>(), len.parse::<u8>()) else { continue };
        if len > 0 && subnet.overlaps(net, len) {
            let dev = route["dev"].as_str().unwrap_or("?");
            let line = format!("route {dst} dev {dev}");
            // An address's own local and subnet routes repeat what is already listed.
            if !found.iter().any(|f| f.ends_with(&format!(" on {dev}"))) && !found.contains(&line) {
                found.push(line);
            }
        }
    }
    Ok(found)
}

/// What `lab up` is asked for.
pub struct UpOptions {
    pub nodes: u32,
    pub subnet: Subnet,
    pub state_dir: PathBuf,
}

/// Progress of `lab up`, for the caller to print.
pub enum Progress<'a> {
    Step(&'a str),
    Healthy {
        healthy: usize,
        of: usize,
        elapsed: Duration,
    },
    /// Workload nodes whose /health is 200.
    NodesHealthy {
        healthy: usize,
        of: usize,
        elapsed: Duration,
    },
}

/// Refuses (exit 2, nothing created) what `lab up` cannot do here.
fn preflight(options: &UpOptions) -> Result<()> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::unsupported(
            "`lab up` creates network namespaces, a bridge and processes: it needs root",
            "run it as root (sudo chaos-ebpf lab up)",
        )
        .into());
    }
    if !(1..=MAX_NODES).contains(&options.nodes) {
        return Err(Error::unsupported(
            format!("--nodes {}: the lab has 1 to {MAX_NODES} etcd members", options.nodes),
            "give --nodes between 1 and 9 (light nodes, up to 4096: --workload echo)",
        )
        .into());
    }
    let missing: Vec<&str> =
        [("etcd", "etcd-server"), ("etcdctl", "etcd-client"), ("prometheus", "prometheus"), ("ip", "iproute2")]
            .into_iter()
            .filter(|(program, _)| !on_path(program))
            .map(|(_, package)| package)
            .collect();
    if !missing.is_empty() {
        return Err(Error::unsupported(
            format!("the lab needs Debian's {} (not found on PATH)", missing.join(", ")),
            "install them: bash scripts/setup.sh",
        )
        .into());
    }
    node_binary()?;
    if let Some(light) = crate::hyper::load(&options.state_dir).unwrap_or(None) {
        return Err(Error::unsupported(
            format!("a light-node lab is already up ({} nodes since {})", light.nodes, since(light.started_unix)),
            "`chaos-ebpf lab down` first",
        )
        .into());
    }
    if let Some(state) = load(&options.state_dir).unwrap_or(None) {
        let since = since(state.started_unix);
        return Err(Error::unsupported(
            if state.complete {
                format!("a lab is already up ({} nodes since {since})", state.nodes)
            } else {
                format!("a lab from a `lab up` that did not finish is left ({} nodes, since {since})", state.nodes)
            },
            "`chaos-ebpf lab down` first",
        )
        .into());
    }
    if options.state_dir.exists() {
        return Err(Error::unsupported(
            format!("{} exists without a readable state.json", options.state_dir.display()),
            "`chaos-ebpf lab down` removes it",
        )
        .into());
    }
    let mut taken: Vec<String> =
        (1..=options.nodes).map(netns_name).filter(|name| netns::path_for(name).exists()).collect();
    taken.extend((1..=options.nodes).map(veth_name).chain([BRIDGE.to_owned()]).filter(|l| link_exists(l)));
    if !taken.is_empty() {
        return Err(Error::unsupported(
            format!("{} already exist(s), not created by a lab this state knows", taken.join(", ")),
            "remove them (ip netns del NAME, ip link del NAME) if they are leftovers",
        )
        .into());
    }
    let used = collisions(options.subnet)?;
    if !used.is_empty() {
        return Err(Error::unsupported(
            format!("the lab range {} is already in use here: {}", options.subnet, used.join("; ")),
            "choose a free /26 with --subnet (inside 198.51.100.0/24 or 198.18.0.0/15)",
        )
        .into());
    }
    Ok(())
}

pub fn netns_name(index: u32) -> String {
    format!("{NETNS_PREFIX}n{index}")
}

fn veth_name(index: u32) -> String {
    format!("chaos-le{index}")
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A UTC time as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn since(unix: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix as i64)
        .map(|t| {
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
                t.year(),
                t.month() as u8,
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        })
        .unwrap_or_else(|_| unix.to_string())
}

/// Spawns `cmd` in its own process group (the terminal's Ctrl-C is `lab up`'s to handle,
/// and the lab outlives it), output to `log`, optionally inside a network namespace.
pub(crate) fn spawn(cmd: &mut Command, log: &Path, inside: Option<&str>) -> Result<Proc> {
    // Appended to: a member restarted by `control` keeps its earlier log.
    let file = fs::File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    cmd.stdin(Stdio::null()).stdout(file.try_clone()?).stderr(file).process_group(0);
    let child = match inside {
        Some(name) => {
            let ns = Netns::open(&netns::path_for(name)).with_context(|| format!("opening netns {name}"))?;
            // The child inherits the namespace of the thread that forks it.
            ns.run(|| cmd.spawn())?
        }
        None => cmd.spawn(),
    }
    .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    // The child is not waited for: the lab outlives `lab up`; `lab down` stops it.
    let pid = child.id();
    std::mem::forget(child);
    Proc::of(pid).with_context(|| format!("{:?} (pid {pid}) exited at once; see {}", cmd.get_program(), log.display()))
}

pub(crate) fn last_lines(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(n).collect();
    short(&lines.into_iter().rev().collect::<Vec<_>>().join(" | "))
}

/// Builds the lab, waits until every member is healthy and Prometheus ready, and returns
/// its status. On any error, or when `interrupted` is set, removes what it created.
pub fn up(options: &UpOptions, interrupted: &AtomicBool, progress: &mut dyn FnMut(Progress)) -> Result<LabStatus> {
    preflight(options)?;
    let dir = options.state_dir.clone();
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    fs::DirBuilder::new().mode(0o700).create(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut state = State {
        version: 1,
        nodes: options.nodes,
        subnet: options.subnet.to_string(),
        started_unix: now_unix(),
        owner: Proc::of(std::process::id()),
        complete: false,
        dir: dir.clone(),
        bridge: None,
        bridge_address: None,
        members: Vec::new(),
        certs: None,
        prometheus: None,
        workloads: Vec::new(),
    };
    let built = state.save().and_then(|()| build(options, &mut state, interrupted, progress));
    match built {
        // Half the status' window: `lab up` is timed, and 10 writes already give the rate.
        Ok(()) => status_of(&state, STATUS_RATE_WINDOW / 2),
        Err(e) => {
            progress(Progress::Step("removing what this lab up created"));
            let removal = down_state(&state);
            match removal {
                Ok(report) if report.remaining.is_empty() => Err(e),
                Ok(report) => Err(e.context(format!("and left behind: {}", report.remaining.join(", ")))),
                Err(d) => Err(e.context(format!("and removing it failed: {d:#}"))),
            }
        }
    }
}

#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "lab up was interrupted; what it had created is removed")
    }
}

impl std::error::Error for Interrupted {}

fn check(interrupted: &AtomicBool) -> Result<()> {
    if interrupted.load(Ordering::Relaxed) {
        return Err(Interrupted.into());
    }
    Ok(())
}

fn build(
    options: &UpOptions,
    state: &mut State,
    interrupted: &AtomicBool,
    progress: &mut dyn FnMut(Progress),
) -> Result<()> {
    let dir = state.dir.clone();
    let subnet = options.subnet;
    progress(Progress::Step(&format!("bridge {BRIDGE} with {}/26 in the root namespace", subnet.bridge())));
    state.bridge = Some(BRIDGE.to_owned());
    state.bridge_address = Some(format!("{}/{}", subnet.bridge(), Subnet::PREFIX));
    state.save()?;
    ip(&["link", "add", BRIDGE, "type", "bridge"])?;
    ip(&["addr", "add", &format!("{}/{}", subnet.bridge(), Subnet::PREFIX), "dev", BRIDGE])?;
    ip(&["link", "set", BRIDGE, "up"])?;

    let cluster: Vec<(String, Ipv4Addr)> = (1..=options.nodes).map(|i| (format!("n{i}"), subnet.member(i))).collect();
    progress(Progress::Step(&format!(
        "{} network namespaces {}..{} on {BRIDGE}",
        options.nodes,
        netns_name(1),
        netns_name(options.nodes)
    )));
    for (i, (name, member_ip)) in (1..=options.nodes).zip(&cluster) {
        check(interrupted)?;
        let member = Member {
            name: name.clone(),
            netns: netns_name(i),
            veth: veth_name(i),
            ip: *member_ip,
            dir: etcd::member_dir(&dir, name),
            process: None,
        };
        state.members.push(member.clone());
        state.save()?;
        ip(&["netns", "add", &member.netns])?;
        ip(&["link", "add", &member.veth, "type", "veth", "peer", "name", "eth0", "netns", &member.netns])?;
        ip(&["link", "set", &member.veth, "master", BRIDGE, "up"])?;
        ip(&["-n", &member.netns, "addr", "add", &format!("{member_ip}/{}", Subnet::PREFIX), "dev", "eth0"])?;
        ip(&["-n", &member.netns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &member.netns, "link", "set", "lo", "up"])?;
    }

    check(interrupted)?;
    progress(Progress::Step("certificates: a new CA, one per member, one client (rcgen)"));
    let certs = certs::mint(&dir, &cluster)?;
    state.certs = Some(certs.clone());
    state.save()?;

    let token = format!("chaos-lab-{}-{}", state.started_unix, std::process::id());
    progress(Progress::Step(&format!("{} etcd members with client and peer TLS", options.nodes)));
    for (index, (name, member_ip)) in cluster.iter().enumerate() {
        check(interrupted)?;
        let member_dir = state.members[index].dir.clone();
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&member_dir)
            .with_context(|| format!("creating {}", member_dir.display()))?;
        let mut cmd = etcd::member_command(
            name,
            *member_ip,
            &cluster,
            &token,
            &member_dir.join("data"),
            &certs.members[index],
            &certs.ca,
        );
        let process = spawn(&mut cmd, &member_dir.join("etcd.log"), Some(&state.members[index].netns))?;
        state.members[index].process = Some(process);
        state.save()?;
    }

    let binary = node_binary()?;
    progress(Progress::Step(&format!(
        "{} workload nodes ({NODE_BINARY} on <member>:{WORKLOAD_PORT}, HTTP/1.1 on TCP and HTTP/3 on UDP, {WORKLOAD_WRITE_RATE} writes)",
        options.nodes
    )));
    for index in 0..state.members.len() {
        check(interrupted)?;
        let member = state.members[index].clone();
        let workload = Workload {
            name: member.name.clone(),
            netns: member.netns.clone(),
            listen: SocketAddr::new(member.ip.into(), WORKLOAD_PORT),
            journal: member.dir.join("journal.jsonl"),
            log: member.dir.join("node.log"),
            process: None,
        };
        state.workloads.push(workload.clone());
        state.save()?;
        let endpoints = state.endpoints_from(&member.name);
        let mut cmd =
            node_command(&binary, &workload.name, &endpoints, &certs, workload.listen, Some(&workload.journal));
        // HTTP/3 on the same port over UDP, with the member's own server certificate (its
        // SAN is the member's address): what `chaos-lab-node get` tries before TCP.
        cmd.arg("--quic-cert").arg(&certs.members[index].cert).arg("--quic-key").arg(&certs.members[index].key);
        let process = spawn(&mut cmd, &workload.log, Some(&workload.netns))?;
        state.workloads[index].process = Some(process);
        state.save()?;
    }

    check(interrupted)?;
    let prom_dir = dir.join("prometheus");
    let port = prometheus::free_loopback_port()?;
    progress(Progress::Step(&format!("prometheus on 127.0.0.1:{port}")));
    state.prometheus = Some(PrometheusState { port, dir: prom_dir.clone(), process: None });
    state.save()?;
    fs::DirBuilder::new().mode(0o700).create(&prom_dir).with_context(|| format!("creating {}", prom_dir.display()))?;
    let nodes_file = prometheus::nodes_file(&prom_dir);
    state.write_node_targets(&[])?;
    fs::write(prometheus::config_file(&prom_dir), prometheus::config(&certs, &cluster, &nodes_file))?;
    let process = spawn(&mut prometheus::command(&prom_dir, port), &prom_dir.join("prometheus.log"), None)?;
    state.prometheus.as_mut().expect("set above").process = Some(process);
    state.save()?;

    wait_healthy(state, &certs, interrupted, progress)?;
    // An interrupt that came while the last health check ran still counts: the user
    // asked for no lab.
    check(interrupted)?;
    state.complete = true;
    state.save()
}

fn wait_healthy(
    state: &State,
    certs: &certs::LabCerts,
    interrupted: &AtomicBool,
    progress: &mut dyn FnMut(Progress),
) -> Result<()> {
    let start = Instant::now();
    let endpoints = state.endpoints();
    let prom = state.prometheus.as_ref().expect("started");
    let mut reported = usize::MAX;
    let mut reported_nodes = usize::MAX;
    loop {
        check(interrupted)?;
        for member in &state.members {
            if !member.process.is_some_and(|p| p.alive()) {
                bail!("etcd member {} exited: {}", member.name, last_lines(&member.dir.join("etcd.log"), 3));
            }
        }
        if !prom.process.is_some_and(|p| p.alive()) {
            bail!("prometheus exited: {}", last_lines(&prom.dir.join("prometheus.log"), 3));
        }
        for node in &state.workloads {
            if !node.process.is_some_and(|p| p.alive()) {
                bail!("workload node {} exited: {}", node.name, last_lines(&node.log, 3));
            }
        }
        let healthy =
            etcd::health(certs, &endpoints).map(|all| all.iter().filter(|(_, h)| h.is_ok()).count()).unwrap_or(0);
        if healthy != reported {
            progress(Progress::Healthy { healthy, of: endpoints.len(), elapsed: start.elapsed() });
            reported = healthy;
        }
        // The nodes write through etcd: they are healthy only once the members are.
        if healthy == endpoints.len() {
            let nodes = state.workloads.iter().filter(|w| node_health(w.listen).0).count();
            if nodes != reported_nodes {
                progress(Progress::NodesHealthy {
                    healthy: nodes,
                    of: state.workloads.len(),
                    elapsed: start.elapsed(),
                });
                reported_nodes = nodes;
            }
            if nodes == state.workloads.len() && prometheus::ready(prom.port) {
                return Ok(());
            }
        }
        if start.elapsed() > UP_TIMEOUT {
            let mut logs: Vec<String> = state
                .members
                .iter()
                .map(|m| format!("{}: {}", m.name, last_lines(&m.dir.join("etcd.log"), 1)))
                .collect();
            if healthy == endpoints.len() {
                logs = state
                    .workloads
                    .iter()
                    .filter_map(|w| Some(format!("node {}: {}", w.name, node_health(w.listen).1?)))
                    .collect();
            }
            // Member-to-member traffic crosses the bridge: with br_netfilter it also
            // crosses iptables' FORWARD chain, whose DROP policy (Docker sets one) would
            // keep the members apart. Said, not changed: the host's firewall is not ours.
            let bridge_nf =
                fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables").is_ok_and(|v| v.trim() == "1");
            let hint = if bridge_nf && healthy < endpoints.len() {
                " (net.bridge.bridge-nf-call-iptables=1 here: check that iptables' FORWARD chain accepts traffic on chaos-lab-br0)"
            } else {
                ""
            };
            bail!(
                "the cluster was not healthy within {} s ({healthy} of {} members, {} of {} workload nodes){hint}: {}",
                UP_TIMEOUT.as_secs(),
                endpoints.len(),
                if reported_nodes == usize::MAX { 0 } else { reported_nodes },
                state.workloads.len(),
                short(&logs.join("; "))
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MemberStatus {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub client_url: String,
    pub pid: Option<u32>,
    pub alive: bool,
    pub healthy: bool,
    /// Why it is not healthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub leader: bool,
    pub raft_term: Option<u64>,
}

/// A workload node: its process, /health, and its load and error rates measured from two
/// samples of its /metrics (`writes_total`) taken `rate_window_ms` apart.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadStatus {
    pub name: String,
    pub listen: SocketAddr,
    pub pid: Option<u32>,
    pub alive: bool,
    /// /health answered 200 (a write was acknowledged within the node's health bound).
    pub healthy: bool,
    /// Why it is not healthy (the node's own reason when it answered).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Acknowledged writes per second.
    pub writes_per_s: Option<f64>,
    /// Failed writes per second.
    pub errors_per_s: Option<f64>,
    /// Failed writes / all writes in the window (`None` when there were none).
    pub error_ratio: Option<f64>,
    /// Members in the node's view (its `members` gauge).
    pub members_seen: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LabStatus {
    pub nodes: u32,
    pub subnet: String,
    pub bridge: Option<String>,
    pub bridge_address: Option<String>,
    pub started: String,
    pub started_unix: u64,
    pub state_dir: PathBuf,
    /// `lab up` finished (the cluster was healthy once).
    pub complete: bool,
    pub members: Vec<MemberStatus>,
    pub leader: Option<String>,
    pub raft_term: Option<u64>,
    pub workloads: Vec<WorkloadStatus>,
    /// How far apart the two /metrics samples of the rates were.
    pub rate_window_ms: u64,
    pub prometheus_url: Option<String>,
    pub prometheus_alive: bool,
    pub prometheus_ready: bool,
    pub ca: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// `lab up` finished, every member and workload node alive and healthy, and
    /// Prometheus ready.
    pub healthy: bool,
    /// Processes of the lab that are gone: a lab to `lab down`.
    pub dead: Vec<String>,
}

/// The lab's status, or `None` when no lab is up.
pub fn status(state_dir: &Path) -> Result<Option<LabStatus>> {
    // SAFETY: no preconditions.
    if state_dir.exists() && unsafe { libc::geteuid() } != 0 {
        return Err(Error::unsupported(
            format!("the lab's state ({}) is readable by root only", state_dir.display()),
            "run it as root (sudo chaos-ebpf lab status)",
        )
        .into());
    }
    match load(state_dir)? {
        Some(state) => status_of(&state, STATUS_RATE_WINDOW).map(Some),
        None => Ok(None),
    }
}

/// How far apart `lab status` samples each node's /metrics for its rates.
pub const STATUS_RATE_WINDOW: Duration = Duration::from_secs(1);

/// (healthy, why not) from a workload node's /health.
pub fn node_health(listen: SocketAddr) -> (bool, Option<String>) {
    match prometheus::http_get_at(listen, "/health") {
        Ok((200, _)) => (true, None),
        Ok((code, body)) => {
            let reason = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["reason"].as_str().map(str::to_owned))
                .unwrap_or_else(|| body.clone());
            (false, Some(short(&format!("/health {code}: {reason}"))))
        }
        Err(e) => (false, Some(short(&format!("/health: no answer ({e})")))),
    }
}

/// What a node's /metrics says now: acknowledged and failed writes, members in its view.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct NodeCounters {
    pub ok: f64,
    pub error: f64,
    pub members: Option<u64>,
}

pub(crate) fn parse_node_metrics(text: &str) -> NodeCounters {
    let mut counters = NodeCounters { ok: 0.0, error: 0.0, members: None };
    for line in text.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        if series.starts_with("writes_total{") {
            if series.contains("result=\"ok\"") {
                counters.ok = value;
            } else if series.contains("result=\"error\"") {
                counters.error = value;
            }
        } else if series == "members" || series.starts_with("members{") {
            counters.members = Some(value as u64);
        }
    }
    counters
}

fn node_counters(listen: SocketAddr) -> Option<(Instant, NodeCounters)> {
    match prometheus::http_get_at(listen, "/metrics") {
        Ok((200, body)) => Some((Instant::now(), parse_node_metrics(&body))),
        _ => None,
    }
}

fn workload_statuses(state: &State, window: Duration, dead: &mut Vec<String>) -> Vec<WorkloadStatus> {
    let alive: Vec<bool> = state.workloads.iter().map(|w| w.process.is_some_and(|p| p.alive())).collect();
    let sample = || -> Vec<Option<(Instant, NodeCounters)>> {
        state.workloads.iter().zip(&alive).map(|(w, alive)| alive.then(|| node_counters(w.listen)).flatten()).collect()
    };
    let first = sample();
    if first.iter().any(Option::is_some) {
        std::thread::sleep(window);
    }
    let second = sample();
    state
        .workloads
        .iter()
        .zip(alive)
        .zip(first.into_iter().zip(second))
        .map(|((w, alive), (first, second))| {
            if !alive {
                dead.push(format!("workload {}", w.name));
            }
            let (healthy, reason) =
                if alive { node_health(w.listen) } else { (false, Some("process not running".to_owned())) };
            let rates = match (first, second) {
                (Some((t0, c0)), Some((t1, c1))) if t1 > t0 => {
                    let seconds = (t1 - t0).as_secs_f64();
                    let round = |v: f64| (v * 100.0).round() / 100.0;
                    let (ok, error) = ((c1.ok - c0.ok).max(0.0), (c1.error - c0.error).max(0.0));
                    Some((
                        round(ok / seconds),
                        round(error / seconds),
                        (ok + error > 0.0).then(|| round(error / (ok + error))),
                        c1.members,
                    ))
                }
                _ => None,
            };
            WorkloadStatus {
                name: w.name.clone(),
                listen: w.listen,
                pid: w.process.map(|p| p.pid),
                alive,
                healthy,
                error: reason,
                writes_per_s: rates.map(|r| r.0),
                errors_per_s: rates.map(|r| r.1),
                error_ratio: rates.and_then(|r| r.2),
                members_seen: rates.and_then(|r| r.3),
            }
        })
        .collect()
}

pub(crate) fn status_of(state: &State, rate_window: Duration) -> Result<LabStatus> {
    let endpoints = state.endpoints();
    let (health, statuses) = match &state.certs {
        Some(certs) if !endpoints.is_empty() => {
            (etcd::health(certs, &endpoints).unwrap_or_default(), etcd::status(certs, &endpoints).unwrap_or_default())
        }
        _ => (Vec::new(), Vec::new()),
    };
    let mut dead = Vec::new();
    let members: Vec<MemberStatus> = state
        .members
        .iter()
        .map(|m| {
            let url = m.client_url();
            let alive = m.process.is_some_and(|p| p.alive());
            if !alive {
                dead.push(format!("etcd {}", m.name));
            }
            let verdict = health.iter().find(|(e, _)| *e == url).map(|(_, h)| h.clone());
            let own = statuses.iter().find(|s| s.endpoint == url);
            MemberStatus {
                name: m.name.clone(),
                netns: m.netns.clone(),
                ip: m.ip,
                client_url: url.clone(),
                pid: m.process.map(|p| p.pid),
                alive,
                healthy: alive && matches!(verdict, Some(Ok(()))),
                error: match (alive, verdict) {
                    (false, _) => Some("process not running".to_owned()),
                    (true, Some(Err(e))) => Some(e),
                    (true, None) => Some("no answer".to_owned()),
                    (true, Some(Ok(()))) => None,
                },
                leader: own.is_some_and(|s| s.is_leader),
                raft_term: own.map(|s| s.raft_term),
            }
        })
        .collect();
    let workloads = workload_statuses(state, rate_window, &mut dead);
    let leader = members.iter().find(|m| m.leader).map(|m| m.name.clone());
    let raft_term = members.iter().filter_map(|m| m.raft_term).max();
    let (prometheus_url, prometheus_alive, prometheus_ready) = match &state.prometheus {
        Some(p) => {
            let alive = p.process.is_some_and(|proc| proc.alive());
            if !alive {
                dead.push("prometheus".to_owned());
            }
            (Some(format!("http://127.0.0.1:{}", p.port)), alive, alive && prometheus::ready(p.port))
        }
        None => (None, false, false),
    };
    // A lab whose `up` did not finish is not one to run experiments on, even if the
    // members it did start answer.
    let healthy = state.complete
        && !members.is_empty()
        && members.iter().all(|m| m.healthy)
        && workloads.iter().all(|w| w.healthy)
        && prometheus_ready;
    Ok(LabStatus {
        nodes: state.nodes,
        subnet: state.subnet.clone(),
        bridge: state.bridge.clone(),
        bridge_address: state.bridge_address.clone(),
        started: since(state.started_unix),
        started_unix: state.started_unix,
        state_dir: state.dir.clone(),
        complete: state.complete,
        members,
        workloads,
        rate_window_ms: rate_window.as_millis() as u64,
        leader,
        raft_term,
        prometheus_url,
        prometheus_alive,
        prometheus_ready,
        ca: state.certs.as_ref().map(|c| c.ca.clone()),
        client_cert: state.certs.as_ref().map(|c| c.client.cert.clone()),
        client_key: state.certs.as_ref().map(|c| c.client.key.clone()),
        healthy,
        dead,
    })
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DownReport {
    pub removed: Vec<String>,
    /// What is still there after removal (verified): empty when all is gone.
    pub remaining: Vec<String>,
}

/// Removes the lab (`None`: no lab was up).
pub fn down(state_dir: &Path) -> Result<Option<DownReport>> {
    if !state_dir.exists() {
        return Ok(None);
    }
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::unsupported(
            "`lab down` stops processes and removes namespaces and a bridge: it needs root",
            "run it as root (sudo chaos-ebpf lab down)",
        )
        .into());
    }
    // Thaw paused members (a stopped process ignores SIGTERM) and put swapped certificates back.
    let mut undone = crate::control::undo_before_down(state_dir);
    match load(state_dir) {
        Ok(Some(state)) => down_state(&state).map(|mut r| {
            undone.append(&mut r.removed);
            r.removed = undone;
            Some(r)
        }),
        // A state directory without a state: nothing was created yet but the directory (the
        // state is written before anything else).
        _ => {
            let mut report = DownReport::default();
            remove_dir(state_dir, &mut report);
            Ok(Some(report))
        }
    }
}

fn remove_dir(dir: &Path, report: &mut DownReport) {
    match fs::remove_dir_all(dir) {
        Ok(()) => report.removed.push(format!("state directory {}", dir.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => report.remaining.push(format!("state directory {}: {e}", dir.display())),
    }
}

/// (dev, inode) of a network namespace file.
fn ns_id(path: &Path) -> Option<(u64, u64)> {
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Processes of the lab: those recorded (same start time), any process inside one of
/// its namespaces (only the lab puts processes there), and a Prometheus run on its
/// config file (found by command line, in case `lab up` died before recording its pid).
fn lab_processes(state: &State) -> Vec<(String, Proc)> {
    let mut found: Vec<(String, Proc)> = Vec::new();
    for m in &state.members {
        if let Some(p) = m.process.filter(Proc::alive) {
            found.push((format!("etcd {} (pid {})", m.name, p.pid), p));
        }
    }
    if let Some(p) = state.prometheus.as_ref().and_then(|p| p.process).filter(Proc::alive) {
        found.push((format!("prometheus (pid {})", p.pid), p));
    }
    let namespaces: Vec<(String, (u64, u64))> =
        state.members.iter().filter_map(|m| Some((m.name.clone(), ns_id(&netns::path_for(&m.netns))?))).collect();
    let config = state.prometheus.as_ref().map(|p| prometheus::config_file(&p.dir).display().to_string());
    let own = std::process::id();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid == own || found.iter().any(|(_, p)| p.pid == pid) {
            continue;
        }
        let Some(proc) = Proc::of(pid).filter(Proc::alive) else { continue };
        if let Some(id) = ns_id(&entry.path().join("ns/net")) {
            if let Some((name, _)) = namespaces.iter().find(|(_, ns)| *ns == id) {
                found.push((format!("process {pid} in {name}'s namespace"), proc));
                continue;
            }
        }
        if let Some(config) = &config {
            let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            if args.iter().any(|a| a.ends_with(config.as_bytes())) {
                found.push((format!("prometheus (pid {pid})"), proc));
            }
        }
    }
    found
}

/// The pid of the member that leads now, if the members answer (bounded by etcdctl's
/// timeouts).
fn leader_pid(state: &State) -> Option<u32> {
    let certs = state.certs.as_ref()?;
    let alive: Vec<&Member> = state.members.iter().filter(|m| m.process.is_some_and(|p| p.alive())).collect();
    if alive.len() < 2 {
        return None;
    }
    let endpoints: Vec<String> = alive.iter().map(|m| m.client_url()).collect();
    let leader = etcd::status(certs, &endpoints).ok()?.into_iter().find(|s| s.is_leader)?;
    let member = alive.into_iter().find(|m| m.client_url() == leader.endpoint)?;
    member.process.map(|p| p.pid)
}

/// SIGTERM to `processes`, up to `GRACE` for them to exit; those still there get SIGKILL.
fn stop(processes: &[(String, Proc)], report: &mut DownReport) {
    for (_, p) in processes {
        p.signal(libc::SIGTERM);
    }
    let deadline = Instant::now() + GRACE;
    while processes.iter().any(|(_, p)| p.alive()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for (name, p) in processes {
        if p.alive() {
            p.signal(libc::SIGKILL);
            report.removed.push(format!("{name}: killed after {} s", GRACE.as_secs()));
        } else {
            report.removed.push(format!("{name}: stopped"));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while processes.iter().any(|(_, p)| p.alive()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The lab's workload processes: its nodes, surge nodes (recorded in surge.json), and any
/// other `chaos-lab-node` running on the lab's files (started before its record was written).
fn workload_processes(state: &State) -> Vec<(String, Proc)> {
    let mut found: Vec<(String, Proc)> = Vec::new();
    for w in &state.workloads {
        if let Some(p) = w.process.filter(Proc::alive) {
            found.push((format!("workload {} (pid {})", w.name, p.pid), p));
        }
    }
    for node in surge::recorded(&state.dir) {
        if let Some(p) = node.process.filter(Proc::alive) {
            found.push((format!("surge node {} (pid {})", node.name, p.pid), p));
        }
    }
    for (name, p) in node_processes(&state.dir) {
        if !found.iter().any(|(_, f)| f.pid == p.pid) {
            found.push((format!("workload {name} (pid {})", p.pid), p));
        }
    }
    found
}

fn down_state(state: &State) -> Result<DownReport> {
    let mut report = DownReport::default();
    // Workload nodes before etcd: on SIGTERM they revoke their leases, which needs etcd.
    let workloads = workload_processes(state);
    stop(&workloads, &mut report);
    // Processes first: a namespace with a process in it outlives `ip netns del`. The
    // leader last: a leader stopped while its followers are up hands its leadership over
    // first, and waits for that (seconds) when they are stopping too (measured: the
    // leader of 3 members stopped together with them outlived a 5 s grace).
    let processes = lab_processes(state);
    let leader = leader_pid(state);
    let (last, first): (Vec<_>, Vec<_>) = processes.iter().cloned().partition(|(_, p)| Some(p.pid) == leader);
    stop(&first, &mut report);
    stop(&last, &mut report);
    for m in state.members.iter().rev() {
        // The root end first: deleting it removes the pair at once (a deleted
        // namespace's devices go later, in the kernel's cleanup work).
        if link_exists(&m.veth) && ip(&["link", "del", &m.veth]).is_ok() {
            report.removed.push(format!("veth {}", m.veth));
        }
        if netns::path_for(&m.netns).exists() {
            match ip(&["netns", "del", &m.netns]) {
                Ok(()) => report.removed.push(format!("netns {}", m.netns)),
                Err(e) => report.remaining.push(format!("netns {}: {e:#}", m.netns)),
            }
        }
    }
    if let Some(bridge) = &state.bridge {
        if link_exists(bridge) {
            match ip(&["link", "del", bridge]) {
                Ok(()) => report.removed.push(format!("bridge {bridge}")),
                Err(e) => report.remaining.push(format!("bridge {bridge}: {e:#}")),
            }
        }
    }
    remove_dir(&state.dir, &mut report);
    // Verify: nothing of what the state names is left.
    report.remaining.retain(|r| !r.starts_with("netns ") && !r.starts_with("bridge "));
    for (name, p) in workloads.iter().chain(&processes) {
        if p.alive() {
            report.remaining.push(format!("{name} still running"));
        }
    }
    for m in &state.members {
        if netns::path_for(&m.netns).exists() {
            report.remaining.push(format!("netns {}", m.netns));
        }
        if link_exists(&m.veth) {
            report.remaining.push(format!("veth {}", m.veth));
        }
    }
    if state.bridge.as_deref().is_some_and(link_exists) {
        report.remaining.push(format!("bridge {BRIDGE}"));
    }
    if state.dir.exists() {
        report.remaining.push(format!("state directory {}", state.dir.display()));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_must_be_a_lab_slash_26() {
        let s = Subnet::parse("198.51.100.0/26").unwrap();
        assert_eq!(s.member(1), Ipv4Addr::new(198, 51, 100, 1));
        assert_eq!(s.bridge(), Ipv4Addr::new(198, 51, 100, 62));
        assert_eq!(Subnet::parse("198.19.255.192/26").unwrap().member(9), Ipv4Addr::new(198, 19, 255, 201));
        for bad in ["198.51.100.0/24", "198.51.100.1/26", "10.0.0.0/26", "198.20.0.0/26", "nonsense", "198.51.100.0"] {
            let e = Subnet::parse(bad).unwrap_err().to_string();
            assert!(e.contains("--subnet"), "{bad}: {e}");
        }
    }

    #[test]
    fn overlap_is_any_shared_address() {
        let s = Subnet::parse("198.51.100.0/26").unwrap();
        assert!(s.overlaps(Ipv4Addr::new(198, 51, 100, 5), 32));
        assert!(s.overlaps(Ipv4Addr::new(198, 51, 100, 0), 24));
        assert!(s.overlaps(Ipv4Addr::new(198, 0, 0, 0), 8));
        assert!(!s.overlaps(Ipv4Addr::new(198, 51, 100, 64), 28));
        assert!(!s.overlaps(Ipv4Addr::new(192, 0, 2, 2), 24));
    }

    #[test]
    fn a_process_is_known_by_pid_and_start_time() {
        let me = Proc::of(std::process::id()).unwrap();
        assert!(me.alive());
        assert!(!Proc { start_time: me.start_time + 1, ..me }.alive(), "a reused pid is another process");
    }

    #[test]
    fn node_metrics_give_writes_by_result_and_members() {
        let text = "# HELP writes_total Writes to etcd by result\n# TYPE writes_total counter\n\
                    writes_total{node=\"n1\",result=\"error\"} 2\nwrites_total{node=\"n1\",result=\"ok\"} 140\n\
                    write_latency_seconds_count{node=\"n1\"} 140\nmembers{node=\"n1\"} 3\n";
        assert_eq!(parse_node_metrics(text), NodeCounters { ok: 140.0, error: 2.0, members: Some(3) });
        assert_eq!(parse_node_metrics(""), NodeCounters { ok: 0.0, error: 0.0, members: None });
    }

    #[test]
    fn no_state_dir_means_no_lab() {
        let dir = std::env::temp_dir().join(format!("chaos-no-lab-{}", std::process::id()));
        assert!(load(&dir).unwrap().is_none());
        assert!(status(&dir).unwrap().is_none());
        assert!(down(&dir).unwrap().is_none());
    }
}
