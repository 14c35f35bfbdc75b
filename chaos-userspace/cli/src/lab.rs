//! `chaos-ebpf lab up/status/down`: the cluster lab (chaos_lab::cluster): etcd members
//! with TLS in network namespaces on a bridge, a workload node (chaos-lab-node) beside each,
//! and Prometheus scraping them; `lab surge` runs a membership surge on it.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use chaos_datapath::error::Error;
use chaos_lab::{
    cluster::{self, LabStatus, Progress, Subnet, UpOptions},
    hyper,
    surge::{self, SurgeParams, SurgeProgress},
};
use clap::{Subcommand, ValueEnum};

use crate::{exit, output, Output};

pub const LAB_ABOUT: &str = "\
A real distributed system to break: N etcd members (TLS on client and peer traffic) in
network namespaces on one bridge, a workload node (chaos-lab-node, docs/workload.md) in
each namespace writing through etcd, and Prometheus scraping them all (docs/lab.md).

Examples:
  sudo chaos-ebpf lab up                      # 3 members on 198.51.100.0/26
  sudo chaos-ebpf lab up --nodes 5 --subnet 198.18.0.0/26
  sudo chaos-ebpf lab status --output json
  sudo chaos-ebpf lab surge --count 3 --cycles 2
  sudo chaos-ebpf lab down
  sudo chaos-ebpf lab up --workload echo --nodes 1024   # light nodes (docs/lab.md)
  sudo chaos-ebpf lab reach --pairs sample:8 --tcp 16

Addresses: members .1 to .N of the subnet (etcd on :2379, the workload node on :9100),
the bridge (root namespace) .62. State,
certificates, logs and data live in /run/chaos-ebpf/lab (0700); the CA key never leaves it.
Needs root, Debian's etcd-server, etcd-client and prometheus (bash scripts/setup.sh), and
chaos-lab-node next to chaos-ebpf (cargo build --release builds both).";

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// etcd members with TLS, a workload node each, Prometheus (1 to 9 nodes).
    Etcd,
    /// Light nodes: a namespace each and one UDP/TCP echo responder for all (1 to 4096).
    Echo,
}

#[derive(Subcommand)]
pub enum LabCommand {
    /// Create the lab and wait until every member and workload node is healthy and
    /// Prometheus is ready (`--workload echo`: until every light node answers);
    /// prints progress, then the members. Exit 2 (nothing created) when a lab is already
    /// up, the range is in use, or a program is missing; Ctrl-C removes what it created.
    Up {
        /// How many nodes: 1 to 9 etcd members, or 1 to 4096 light nodes with `--workload echo`.
        #[arg(long, default_value_t = 3)]
        nodes: u32,
        #[arg(long, value_enum, default_value_t = Workload::Etcd)]
        workload: Workload,
        /// The lab's IPv4 range. etcd: a /26 inside 198.51.100.0/24 or 198.18.0.0/15
        /// [default: 198.51.100.0/26]. echo: a /15 to /20 inside 198.18.0.0/15 [default:
        /// 198.18.0.0/15]. Refused when a host interface address or route overlaps it.
        #[arg(long, value_name = "CIDR")]
        subnet: Option<String>,
        /// The light-node lab's IPv6 range (echo only): a ULA /48 to /112
        /// [default: fd42:c4a0:100::/48].
        #[arg(long, value_name = "CIDR")]
        subnet6: Option<String>,
        /// Name prefix of the light-node lab's namespaces (tests use their own).
        #[arg(long, hide = true, default_value = hyper::DEFAULT_PREFIX)]
        netns_prefix: String,
    },
    /// Light-node lab: which node pairs answer the echo port, over UDP (one datagram per
    /// pair from inside the source node, 300 ms per round, one retry round for the
    /// missing) and over TCP for `--tcp` of those pairs (connect + echo). Exit 0 when
    /// every pair answered, 1 when one did not, 2 for bad input or no light-node lab.
    Reach {
        /// `all` (every ordered pair, up to 128 nodes) or `sample:K` (every node to K
        /// others, each node also asked by K).
        #[arg(long, default_value = "sample:8")]
        pairs: String,
        /// A node group FIRST-LAST (repeat): instead of --pairs, --per-group pairs for
        /// every ordered pair of groups (a group with itself too).
        #[arg(long, value_name = "FIRST-LAST")]
        group: Vec<String>,
        #[arg(long, default_value_t = 4)]
        per_group: u32,
        /// How many of the pairs (spread over them) also get a TCP connect + echo.
        #[arg(long, default_value_t = 16)]
        tcp: usize,
        /// Probe the nodes' IPv6 addresses instead of IPv4.
        #[arg(long)]
        ipv6: bool,
        /// Wait per round for replies after the last datagram.
        #[arg(long, default_value_t = 300)]
        timeout_ms: u64,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Members (IP, process, health, leader, raft term), workload nodes (health, writes/s
    /// and failed writes/s over 1 s of their /metrics) and Prometheus. Exit 0 when the lab
    /// is up and healthy, 1 otherwise (none up, a process died, a member or node unhealthy).
    Status {
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Membership surge: cycles of COUNT extra workload nodes started at RATE per second,
    /// which join the discovery plane and then leave (SIGTERM); prints how long every lab
    /// node took to see them all join and all leave. Exit 0 when every node saw every
    /// change within 30 s, 1 otherwise; 2 for bad parameters or no lab.
    Surge {
        /// Extra nodes per cycle (1 to 50).
        #[arg(long, default_value_t = 3)]
        count: u32,
        /// Nodes started per second.
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        #[arg(long, default_value_t = 1)]
        cycles: u32,
        /// The member whose namespace they run in (default: spread over the members).
        #[arg(long)]
        member: Option<String>,
        /// Seconds they stay once every node sees them, before they leave.
        #[arg(long, default_value_t = 0.0)]
        settle: f64,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// No acknowledged write lost: every write a workload node journaled as acknowledged
    /// is read back from etcd with its value (`chaos-lab-node verify` on each node's
    /// journal). Exit 0 when every one is readable, 1 when any is missing or mismatched
    /// or etcd cannot be read, 2 when no lab is up.
    Verify {
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Mint a PKI for etcd members that run elsewhere (the compose stack's: `stack.sh up`
    /// does this): a new CA, one certificate per `--member NAME=IP` (server and peer use,
    /// SANs the IP and NAME) as NAME.pem / NAME-key.pem, and a client certificate
    /// (client.pem), in DIR (created 0700; keys 0600). Exit 2 when DIR already holds a
    /// CA: remove it first, a CA is never replaced under running members.
    Pki {
        /// Where the files go.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// A member, NAME=IPv4 (repeat), e.g. chaos-stack-etcd-1=198.51.100.98.
        #[arg(long, value_name = "NAME=IP", required = true)]
        member: Vec<String>,
    },
    /// Stop the lab's processes (workload nodes first, then etcd and Prometheus: SIGTERM,
    /// 5 s, SIGKILL), remove its namespaces, bridge and
    /// files, then verify that nothing is left. Exit 0 when nothing is left (also when no
    /// lab was up), 1 when something could not be removed.
    Down {
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

pub fn run(command: LabCommand, state_dir: Option<PathBuf>) -> Result<i32> {
    let state_dir = state_dir.unwrap_or_else(|| PathBuf::from(cluster::STATE_DIR));
    let state_dir = state_dir.as_path();
    match command {
        LabCommand::Up { nodes, workload: Workload::Etcd, subnet, subnet6, .. } => {
            if subnet6.is_some() {
                return Err(Error::unsupported(
                    "--subnet6 is for the light-node lab; the etcd lab is IPv4 only",
                    "leave --subnet6 out, or add --workload echo",
                )
                .into());
            }
            up(nodes, subnet.as_deref().unwrap_or(cluster::DEFAULT_SUBNET), state_dir)
        }
        LabCommand::Up { nodes, workload: Workload::Echo, subnet, subnet6, netns_prefix } => {
            let options = hyper::UpOptions {
                nodes,
                subnet4: subnet.unwrap_or_else(|| hyper::DEFAULT_SUBNET4.to_owned()),
                subnet6: subnet6.unwrap_or_else(|| hyper::DEFAULT_SUBNET6.to_owned()),
                state_dir: state_dir.to_owned(),
                prefix: netns_prefix,
            };
            hyper_up(&options)
        }
        LabCommand::Reach { pairs, group, per_group, tcp, ipv6, timeout_ms, output } => {
            reach(state_dir, &pairs, &group, per_group, tcp, ipv6, timeout_ms, output == Output::Json)
        }
        LabCommand::Status { output } => {
            if let Some(state) = hyper::load(state_dir)? {
                return hyper_status(&state, output == Output::Json);
            }
            status(state_dir, output == Output::Json)
        }
        LabCommand::Down { output } => {
            if hyper::load(state_dir)?.is_some() {
                return hyper_down(state_dir, output == Output::Json);
            }
            down(state_dir, output == Output::Json)
        }
        LabCommand::Verify { output } => verify(state_dir, output == Output::Json),
        LabCommand::Pki { dir, member } => pki(&dir, &member),
        LabCommand::Surge { count, rate, cycles, member, settle, output } => {
            if !(settle.is_finite() && settle >= 0.0) {
                return Err(Error::unsupported(
                    format!("--settle {settle}: not a number of seconds"),
                    "give --settle 0 or more",
                )
                .into());
            }
            let params = SurgeParams { count, rate, cycles, member, settle: Duration::from_secs_f64(settle) };
            surge_run(state_dir, &params, output == Output::Json)
        }
    }
}

fn verify(state_dir: &Path, json: bool) -> Result<i32> {
    let Some(state) = cluster::load(state_dir)? else {
        return Err(Error::unsupported("no lab is up", "`chaos-ebpf lab up` first").into());
    };
    let mut checks = chaos_lab::verify::journals(&state)?;
    for c in &mut checks {
        c.said = crate::clip_lines(&c.said);
    }
    let all_readable = !checks.is_empty() && checks.iter().all(|c| c.code == 0);
    if json {
        output::out(&serde_json::to_string_pretty(
            &serde_json::json!({ "all_readable": all_readable, "nodes": checks }),
        )?);
    } else {
        for c in &checks {
            for line in c.said.lines() {
                output::out(&format!("{}: {line}", c.node));
            }
            if let (Some(gap), Some(from)) = (c.longest_gap_ms, c.gap_from_unix_ms) {
                output::out(&format!(
                    "{}: longest gap between acknowledged writes: {gap} ms, from {}",
                    c.node,
                    crate::report::utc(from)
                ));
            }
        }
        output::out(if all_readable {
            "lab verify: every acknowledged write is readable"
        } else if checks.is_empty() {
            "lab verify: no node has a journal yet"
        } else {
            "lab verify: ACKNOWLEDGED WRITES ARE MISSING OR UNREADABLE (see above)"
        });
    }
    Ok(if all_readable { 0 } else { exit::FAILED })
}

fn surge_run(state_dir: &Path, params: &SurgeParams, json: bool) -> Result<i32> {
    let Some(state) = cluster::load(state_dir)? else {
        return Err(Error::unsupported("no lab is up", "`chaos-ebpf lab up` first").into());
    };
    let interrupted = chaos_engine::run::install_signal_handlers()?;
    let ms = |v: Option<u64>| v.map(|v| format!("{v} ms")).unwrap_or_else(|| "NOT within 30 s".into());
    let report = surge::surge(&state, params, interrupted, &mut |p| match p {
        SurgeProgress::Starting { cycle, nodes } => {
            output::err(&format!("lab surge: cycle {cycle}: starting {} at {}/s", nodes.join(", "), params.rate))
        }
        SurgeProgress::Joined { cycle, max_ms } => {
            output::err(&format!("lab surge: cycle {cycle}: every node saw them join in {}", ms(max_ms)))
        }
        SurgeProgress::Left { cycle, max_ms } => {
            output::err(&format!("lab surge: cycle {cycle}: every node saw them leave in {}", ms(max_ms)))
        }
    })?;
    if json {
        output::out(&serde_json::to_string_pretty(&report)?);
    } else {
        output::out(&format!("{:<6} {:<10} {:>10} {:>10}", "CYCLE", "OBSERVER", "JOIN", "LEAVE"));
        for cycle in &report.cycles {
            for (join, leave) in cycle.join.iter().zip(&cycle.leave) {
                let cell = |v: Option<u64>| v.map(|v| format!("{v} ms")).unwrap_or_else(|| "-".into());
                output::out(&format!(
                    "{:<6} {:<10} {:>10} {:>10}",
                    cycle.cycle,
                    join.observer,
                    cell(join.ms),
                    cell(leave.ms)
                ));
            }
        }
        output::out(&format!(
            "surge: {} cycles of {} nodes; slowest join {}, slowest leave {}",
            report.cycles.len(),
            report.count,
            ms(report.join_max_ms),
            ms(report.leave_max_ms)
        ));
    }
    Ok(if report.converged { 0 } else { exit::FAILED })
}

fn up(nodes: u32, subnet: &str, state_dir: &Path) -> Result<i32> {
    let subnet = Subnet::parse(subnet)?;
    // Ctrl-C, SIGTERM and SIGHUP from here on set a flag that `up` checks between steps:
    // it then removes what it created.
    let interrupted = chaos_engine::run::install_signal_handlers()?;
    let start = Instant::now();
    let options = UpOptions { nodes, subnet, state_dir: state_dir.to_owned() };
    let status = cluster::up(&options, interrupted, &mut |p| match p {
        Progress::Step(text) => output::err(&format!("lab up: {text}")),
        Progress::Healthy { healthy, of, elapsed } => {
            output::err(&format!("lab up: {healthy}/{of} members healthy after {:.1} s", elapsed.as_secs_f64()))
        }
        Progress::NodesHealthy { healthy, of, elapsed } => {
            output::err(&format!("lab up: {healthy}/{of} workload nodes healthy after {:.1} s", elapsed.as_secs_f64()))
        }
    })?;
    output::err(&format!("lab up: ready in {:.1} s", start.elapsed().as_secs_f64()));
    print_table(&status);
    Ok(0)
}

fn status(state_dir: &Path, json: bool) -> Result<i32> {
    let status = cluster::status(state_dir)?;
    if json {
        output::out(&serde_json::to_string_pretty(&serde_json::json!({ "up": status.is_some(), "lab": status }))?);
    } else if let Some(status) = &status {
        print_table(status);
    } else {
        output::out("no lab is up (`chaos-ebpf lab up` starts one)");
    }
    Ok(if status.is_some_and(|s| s.healthy) { 0 } else { exit::FAILED })
}

fn print_table(s: &LabStatus) {
    let verdict = if s.healthy {
        "healthy".to_owned()
    } else if !s.dead.is_empty() {
        format!("DEAD: {} not running; `chaos-ebpf lab down` cleans it", s.dead.join(", "))
    } else if !s.complete {
        "INCOMPLETE: `lab up` did not finish; `chaos-ebpf lab down` cleans it".to_owned()
    } else {
        "UNHEALTHY".to_owned()
    };
    output::out(&format!(
        "lab: {} etcd members on {} (bridge {} {}), up since {}: {verdict}",
        s.nodes,
        s.subnet,
        s.bridge.as_deref().unwrap_or("-"),
        s.bridge_address.as_deref().unwrap_or("-"),
        s.started
    ));
    output::out(&format!(
        "{:<7} {:<15} {:<8} {:<8} {:<10} {:<8} {:<5}",
        "MEMBER", "IP", "PID", "PROCESS", "HEALTH", "ROLE", "TERM"
    ));
    for m in &s.members {
        output::out(&format!(
            "{:<7} {:<15} {:<8} {:<8} {:<10} {:<8} {:<5}{}",
            m.name,
            m.ip.to_string(),
            m.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            if m.alive { "running" } else { "dead" },
            if m.healthy { "healthy" } else { "unhealthy" },
            if m.leader {
                "leader"
            } else if m.raft_term.is_some() {
                "follower"
            } else {
                "-"
            },
            m.raft_term.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
            m.error.as_deref().map(|e| format!("  {e}")).unwrap_or_default()
        ));
    }
    output::out(&format!(
        "{:<7} {:<20} {:<8} {:<8} {:<10} {:>9} {:>9} {:>8}",
        "NODE", "LISTEN", "PID", "PROCESS", "HEALTH", "WRITES/S", "ERRORS/S", "MEMBERS"
    ));
    let rate = |r: Option<f64>| r.map(|r| format!("{r:.1}")).unwrap_or_else(|| "-".into());
    for w in &s.workloads {
        output::out(&format!(
            "{:<7} {:<20} {:<8} {:<8} {:<10} {:>9} {:>9} {:>8}{}",
            w.name,
            w.listen.to_string(),
            w.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            if w.alive { "running" } else { "dead" },
            if w.healthy { "healthy" } else { "unhealthy" },
            rate(w.writes_per_s),
            rate(w.errors_per_s),
            w.members_seen.map(|m| m.to_string()).unwrap_or_else(|| "-".into()),
            w.error.as_deref().map(|e| format!("  {e}")).unwrap_or_default()
        ));
    }
    output::out(&format!(
        "leader: {}, raft term {}",
        s.leader.as_deref().unwrap_or("none"),
        s.raft_term.map(|t| t.to_string()).unwrap_or_else(|| "-".into())
    ));
    if let Some(url) = &s.prometheus_url {
        let state = if s.prometheus_ready {
            "ready"
        } else if s.prometheus_alive {
            "not ready"
        } else {
            "dead"
        };
        output::out(&format!("prometheus: {url} ({state})"));
    }
    if let (Some(ca), Some(cert), Some(key)) = (&s.ca, &s.client_cert, &s.client_key) {
        let endpoints: Vec<&str> = s.members.iter().map(|m| m.client_url.as_str()).collect();
        output::out(&format!(
            "etcdctl: ETCDCTL_API=3 etcdctl --endpoints={} --cacert={} --cert={} --key={} endpoint status -w table",
            endpoints.join(","),
            ca.display(),
            cert.display(),
            key.display()
        ));
    }
}

fn down(state_dir: &Path, json: bool) -> Result<i32> {
    let start = Instant::now();
    let report = cluster::down(state_dir)?;
    let seconds = start.elapsed().as_secs_f64();
    if json {
        output::out(&serde_json::to_string_pretty(&serde_json::json!({
            "was_up": report.is_some(),
            "removed": report.as_ref().map(|r| r.removed.clone()).unwrap_or_default(),
            "remaining": report.as_ref().map(|r| r.remaining.clone()).unwrap_or_default(),
            "seconds": seconds,
        }))?);
    }
    let Some(report) = report else {
        if !json {
            output::out("no lab is up");
        }
        return Ok(0);
    };
    if !json {
        for line in &report.removed {
            output::out(&format!("removed: {line}"));
        }
        for line in &report.remaining {
            output::out(&format!("LEFT: {line}"));
        }
        if report.remaining.is_empty() {
            output::out(&format!("lab down in {seconds:.1} s: verified, nothing is left"));
        }
    }
    Ok(if report.remaining.is_empty() { 0 } else { exit::FAILED })
}

fn hyper_up(options: &hyper::UpOptions) -> Result<i32> {
    let interrupted = chaos_engine::run::install_signal_handlers()?;
    let report = hyper::up(options, interrupted, &mut |step| output::err(&format!("lab up: {step}")))?;
    let phases: Vec<String> = report.phases.iter().map(|(name, s)| format!("{name} {s:.2} s")).collect();
    output::err(&format!("lab up: phases: {}", phases.join(", ")));
    output::out(&format!(
        "lab up: {} light nodes ready in {:.2} s; memory: kernel +{:.0} MB, echo responder (pid {}) RSS {:.1} MB",
        report.nodes,
        report.seconds,
        report.kernel_memory_kb as f64 / 1024.0,
        report.responder_pid,
        report.responder_rss_kb as f64 / 1024.0
    ));
    Ok(0)
}

fn hyper_status(state: &hyper::HyperState, json: bool) -> Result<i32> {
    let s = hyper::status(state);
    if json {
        output::out(&serde_json::to_string_pretty(&serde_json::json!({ "up": true, "light_lab": s }))?);
    } else {
        let verdict = if s.healthy {
            "healthy".to_owned()
        } else if !s.complete {
            "INCOMPLETE: `lab up` did not finish; `chaos-ebpf lab down` cleans it".to_owned()
        } else {
            format!(
                "UNHEALTHY: responder {}, {} of {} namespaces; `chaos-ebpf lab down` cleans it",
                if s.responder_alive { "running" } else { "DEAD" },
                s.namespaces_present,
                s.nodes
            )
        };
        output::out(&format!(
            "light-node lab ({} workload): {} nodes on {} and {}, up since {}{}: {verdict}",
            s.workload,
            s.nodes,
            s.subnet4,
            s.subnet6,
            s.started,
            s.up_seconds.map(|t| format!(" (lab up took {t:.2} s)")).unwrap_or_default()
        ));
        output::out(&format!(
            "hub namespace {} with bridges {}; echo port {} (UDP, TCP); responder pid {} ({}), RSS {:.1} MB",
            s.hub,
            s.bridges.join(", "),
            s.echo_port,
            s.responder_pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            if s.responder_alive { "running" } else { "dead" },
            s.responder_rss_kb as f64 / 1024.0
        ));
    }
    Ok(if s.healthy { 0 } else { exit::FAILED })
}

fn hyper_down(state_dir: &Path, json: bool) -> Result<i32> {
    let start = Instant::now();
    let report = hyper::down(state_dir)?.unwrap_or_default();
    let seconds = start.elapsed().as_secs_f64();
    if json {
        output::out(&serde_json::to_string_pretty(&serde_json::json!({
            "was_up": true,
            "removed": report.removed,
            "remaining": report.remaining,
            "links_gone_seconds": report.links_gone_seconds,
            "seconds": seconds,
        }))?);
    } else {
        for line in &report.removed {
            output::out(&format!("removed: {line}"));
        }
        for line in &report.remaining {
            output::out(&format!("LEFT: {line}"));
        }
        if report.remaining.is_empty() {
            output::out(&format!(
                "lab down in {seconds:.2} s (every link gone after {:.2} s): verified, nothing is left",
                report.links_gone_seconds.unwrap_or(0.0)
            ));
        }
    }
    Ok(if report.remaining.is_empty() { 0 } else { exit::FAILED })
}

/// `FIRST-LAST` (or one node number).
fn parse_group(text: &str, nodes: u32) -> Result<Vec<u32>> {
    let bad = || {
        Error::unsupported(
            format!("--group {}: not FIRST-LAST of nodes 1..{nodes}", cluster::short(text)),
            "give node numbers like --group 1-512 --group 513-1024",
        )
    };
    let (a, b) = text.split_once('-').unwrap_or((text, text));
    let (a, b): (u32, u32) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
    if a == 0 || a > b || b > nodes {
        return Err(bad().into());
    }
    Ok((a..=b).collect())
}

/// Most ordered pairs `lab reach --pairs all` takes (128 nodes).
const ALL_PAIRS_MAX_NODES: u32 = 128;

#[allow(clippy::too_many_arguments)]
fn reach(
    state_dir: &Path,
    pairs: &str,
    groups: &[String],
    per_group: u32,
    tcp: usize,
    ipv6: bool,
    timeout_ms: u64,
    json: bool,
) -> Result<i32> {
    if !(1..=10_000).contains(&timeout_ms) {
        return Err(Error::unsupported(format!("--timeout-ms {timeout_ms}: out of range"), "give 1 to 10000 ms").into());
    }
    let (state, nodes) = hyper::nodes(state_dir)?;
    let n = state.nodes;
    let asked: Vec<(u32, u32)> = if !groups.is_empty() {
        let groups: Vec<Vec<u32>> = groups.iter().map(|g| parse_group(g, n)).collect::<Result<_>>()?;
        hyper::reach::group_pairs(&groups, per_group, 42)
    } else if pairs == "all" {
        if n > ALL_PAIRS_MAX_NODES {
            return Err(Error::unsupported(
                format!("--pairs all on {n} nodes is {} datagrams", n as u64 * (n as u64 - 1)),
                format!("all pairs is for up to {ALL_PAIRS_MAX_NODES} nodes; use --pairs sample:K or --group"),
            )
            .into());
        }
        hyper::reach::all_pairs(n)
    } else if let Some(k) = pairs.strip_prefix("sample:").and_then(|k| k.parse::<u32>().ok()).filter(|k| *k >= 1) {
        hyper::reach::sample_pairs(n, k, 42)
    } else {
        return Err(Error::unsupported(
            format!("--pairs {}: not all or sample:K", cluster::short(pairs)),
            "give --pairs all (up to 128 nodes) or --pairs sample:8",
        )
        .into());
    };
    hyper::raise_fd_limit(n as u64 + 256)?;
    let options = hyper::reach::Options { timeout: Duration::from_millis(timeout_ms), retries: 1, ipv6 };
    let udp = hyper::reach::udp(&nodes, &asked, state.echo_port, options)?;
    let step = (asked.len() / tcp.max(1)).max(1);
    let tcp_pairs: Vec<(u32, u32)> = asked.iter().step_by(step).take(tcp).copied().collect();
    let tcp = hyper::reach::tcp(&nodes, &tcp_pairs, state.echo_port, Duration::from_millis(timeout_ms), ipv6)?;
    let all = udp.unanswered.is_empty() && tcp.unanswered.is_empty();
    if json {
        // One line: the pair lists run to thousands of entries.
        output::out(&serde_json::to_string(&serde_json::json!({ "nodes": n, "udp": udp, "tcp": tcp }))?);
    } else {
        for r in [&udp, &tcp] {
            output::out(&format!(
                "{}: {} of {} pairs answered in {:.2} s ({} round(s))",
                r.protocol.to_uppercase(),
                r.answered.len(),
                r.asked,
                r.seconds,
                r.rounds
            ));
            if !r.unanswered.is_empty() {
                let shown: Vec<String> = r.unanswered.iter().take(20).map(|(s, d)| format!("n{s}->n{d}")).collect();
                let more = r.unanswered.len().saturating_sub(20);
                output::out(&format!(
                    "  unanswered: {}{}",
                    shown.join(" "),
                    if more > 0 { format!(" (and {more} more; --output json lists all)") } else { String::new() }
                ));
            }
        }
    }
    Ok(if all { 0 } else { exit::FAILED })
}

/// `lab pki`: see its help.
fn pki(dir: &Path, members: &[String]) -> Result<i32> {
    let mut parsed = Vec::new();
    for member in members {
        let bad = || {
            Error::unsupported(
                format!("--member '{}': not NAME=IPv4", chaos_model::spec::shorten(member, 80)),
                "give --member chaos-stack-etcd-1=198.51.100.98 (a DNS name and its IPv4 address)",
            )
        };
        let (name, ip) = member.split_once('=').ok_or_else(bad)?;
        let ip: std::net::Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let valid = !name.is_empty()
            && name.len() <= 63
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !name.starts_with('-');
        if !valid || parsed.iter().any(|(n, _): &(String, _)| n == name) {
            return Err(bad().into());
        }
        parsed.push((name.to_owned(), ip));
    }
    if dir.join("ca.pem").exists() || dir.join("ca-key.pem").exists() {
        return Err(Error::unsupported(
            format!("{} already holds a CA", dir.display()),
            "remove the directory first (members that use it must be stopped), or give another --dir",
        )
        .into());
    }
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let certs = chaos_lab::certs::mint(dir, &parsed)?;
    for (name, ip) in &parsed {
        println!("{name} ({ip}): {}", dir.join(format!("{name}.pem")).display());
    }
    println!("CA {}; client {}", certs.ca.display(), certs.client.cert.display());
    Ok(0)
}
