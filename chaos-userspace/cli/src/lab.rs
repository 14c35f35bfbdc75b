//! `chaos-ebpf lab up/status/down`: the cluster lab (chaos_lab::cluster): etcd members
//! with TLS in network namespaces on a bridge, a workload node (chaos-lab-node) beside each,
//! and Prometheus scraping them; `lab surge` runs a membership surge on it.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Result;
use chaos_datapath::error::Error;
use chaos_lab::{
    cluster::{self, LabStatus, Progress, Subnet, UpOptions},
    surge::{self, SurgeParams, SurgeProgress},
};
use clap::Subcommand;

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

Addresses: members .1 to .N of the subnet (etcd on :2379, the workload node on :9100),
the bridge (root namespace) .62. State,
certificates, logs and data live in /run/chaos-ebpf/lab (0700); the CA key never leaves it.
Needs root, Debian's etcd-server, etcd-client and prometheus (bash scripts/setup.sh), and
chaos-lab-node next to chaos-ebpf (cargo build --release builds both).";

#[derive(Subcommand)]
pub enum LabCommand {
    /// Create the lab and wait until every member and workload node is healthy and
    /// Prometheus is ready;
    /// prints progress, then the members. Exit 2 (nothing created) when a lab is already
    /// up, the range is in use, or a program is missing; Ctrl-C removes what it created.
    Up {
        /// How many etcd members (1 to 9).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=9))]
        nodes: u32,
        /// The lab's /26: inside 198.51.100.0/24 or 198.18.0.0/15. Refused when a host
        /// interface address or route already overlaps it.
        #[arg(long, value_name = "CIDR", default_value = cluster::DEFAULT_SUBNET)]
        subnet: String,
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
    /// Stop the lab's processes (workload nodes first, then etcd and Prometheus: SIGTERM,
    /// 5 s, SIGKILL), remove its namespaces, bridge and
    /// files, then verify that nothing is left. Exit 0 when nothing is left (also when no
    /// lab was up), 1 when something could not be removed.
    Down {
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

pub fn run(command: LabCommand) -> Result<i32> {
    let state_dir = Path::new(cluster::STATE_DIR);
    match command {
        LabCommand::Up { nodes, subnet } => up(nodes, &subnet, state_dir),
        LabCommand::Status { output } => status(state_dir, output == Output::Json),
        LabCommand::Down { output } => down(state_dir, output == Output::Json),
        LabCommand::Verify { output } => verify(state_dir, output == Output::Json),
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
