//! `chaos-ebpf agent`: the resident agent (chaos-agent), `agent status`, and `inject`
//! through a running agent.

use std::{
    path::{Path, PathBuf},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::Result;
use chaos_agent::{client::Client, PrometheusUrl, DEFAULT_METRICS_ADDR, DEFAULT_SOCKET};
use chaos_ebpf_common::{RuleCounters, MAX_FLOWS, MAX_FLOWS_LIMIT, MAX_PEERS, MAX_PEERS_LIMIT, MIN_FLOWS};
use chaos_engine::remote::{RemoteFault, RemoteRule};
use chaos_model::{
    plan::{Attach, Plan, Protect},
    spec::FaultSpec,
};
use clap::{Args, Subcommand};

use crate::{
    execute::{parse_metrics_addr, MetricsAddr},
    exit, output, Output,
};

pub const AGENT_ABOUT: &str = "\
Run the resident agent: it loads the programs once per network namespace and applies and
reverts faults by map writes, in milliseconds instead of a program load per fault.

Clients talk HTTP/1.1 + JSON over a Unix socket (root or the agent's own uid only; others
get 403). `inject` goes through the agent when one answers on the socket, renews the
fault's lease while it waits and reverts at the end; `--no-agent` forces the old path.
Every fault has a lease its client renews; the kernel drops the rule at the lease's end
even before the agent reaps it. SIGINT or SIGTERM reverts everything and exits 0.

Examples:
  sudo chaos-ebpf agent
  sudo chaos-ebpf agent --netns /var/run/netns/a --netns /var/run/netns/b
  sudo chaos-ebpf agent --socket /tmp/chaos.sock --metrics-addr off
  sudo chaos-ebpf agent --prometheus-url http://127.0.0.1:9090      (then open /dashboard)
  sudo chaos-ebpf inject partition --target netns:a --duration 30s      (through the agent)
  sudo chaos-ebpf agent status
  sudo curl --unix-socket /run/chaos-ebpf/agent.sock http://agent/v1/faults
  NODE_NAME=node-1 sudo -E chaos-ebpf agent --kubernetes --namespace shop
      (the ChaosExperiment controller; the Helm chart runs it as a DaemonSet:
      docs/kubernetes.md)

The API (docs/agent.md): GET /v1/health, GET /v1/faults, POST /v1/faults,
POST /v1/faults/ID/renew, DELETE /v1/faults/ID; errors are {\"problem\", \"fix\"}.
Metrics: http://127.0.0.1:9465/metrics (--metrics-addr); a live dashboard of the
Prometheus that scrapes the agent at http://127.0.0.1:9465/dashboard (--prometheus-url).";

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AgentArgs {
    #[command(subcommand)]
    command: Option<AgentCommand>,
    /// The Unix socket of the API (its directory is created 0700 when missing; the
    /// socket is 0660).
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Serve Prometheus metrics at http://ADDR/metrics (IP:PORT), or `off`.
    #[arg(long, value_name = "ADDR", value_parser = parse_metrics_addr, default_value = DEFAULT_METRICS_ADDR)]
    metrics_addr: MetricsAddr,
    /// The Prometheus that scrapes this agent (http[s]://HOST[:PORT][/PATH]): the
    /// dashboard page at http://--metrics-addr/dashboard draws its live charts from it,
    /// asking it directly (Prometheus allows any origin by default) or through the agent
    /// (GET /api/v1/query and /api/v1/query_range only; http only). Without it the page
    /// says how to set it.
    #[arg(long, value_name = "URL", value_parser = PrometheusUrl::parse)]
    prometheus_url: Option<PrometheusUrl>,
    /// Load the programs into this network namespace at start (a name under
    /// /var/run/netns or a path; repeatable). Others are loaded on their first fault.
    #[arg(long = "netns", value_name = "PATH")]
    netns: Vec<String>,
    /// Peer prefixes each namespace's address trie holds, over all faults in force there
    /// (1 to 4194304). The trie takes memory per prefix written, not up front; requests
    /// may carry about 48 bytes of JSON per prefix. Raise it for faults with many peers
    /// (e.g. 1000000 for a partition from a million addresses).
    #[arg(long, value_name = "N", default_value_t = MAX_PEERS, value_parser = parse_max_peers)]
    max_peers: u32,
    /// Flows each namespace's flow table holds (64 to 4194304): the per-flow state of
    /// loss, jitter, burst and tls-refuse faults, allocated in full when the programs
    /// load (136 bytes each: the default takes 8.9 MB per namespace). Partition,
    /// blackhole and rate faults keep none: `--flow-table 64` (9.6 KB) for an agent that
    /// only partitions. When more flows pass than it holds, the least recently seen
    /// ones start over.
    #[arg(long, value_name = "N", default_value_t = MAX_FLOWS, value_parser = parse_flow_table)]
    flow_table: u32,
    /// Run the Kubernetes controller (docs/kubernetes.md): reconcile the ChaosExperiment
    /// resources that select pods on this node. The API server comes from the pod's
    /// service account (in a DaemonSet) or KUBECONFIG / ~/.kube/config.
    #[arg(long)]
    kubernetes: bool,
    /// With --kubernetes: this node's name (default: $NODE_NAME, which the Helm chart
    /// sets from spec.nodeName).
    #[arg(long, value_name = "NAME", requires = "kubernetes")]
    node_name: Option<String>,
    /// With --kubernetes: a namespace whose experiments and pods this agent acts on
    /// (repeatable); none: all namespaces. Experiments that name another are refused in
    /// their status.
    #[arg(long = "namespace", value_name = "NS", requires = "kubernetes")]
    namespaces: Vec<String>,
    /// What the agent logs on stderr: `info`, every event (faults applied and
    /// released, programs loaded and unloaded, pod actions) and every problem; `warn`,
    /// the problems only.
    #[arg(long, value_enum, default_value_t = LogLevel::Info)]
    log_level: LogLevel,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogLevel {
    Info,
    Warn,
}

/// --flow-table: a size the flow table can have.
fn parse_flow_table(value: &str) -> Result<u32, String> {
    let fix = format!("give a count from {MIN_FLOWS} to {MAX_FLOWS_LIMIT}, e.g. --flow-table 262144");
    match value.trim().parse::<u64>() {
        Ok(n) if (u64::from(MIN_FLOWS)..=u64::from(MAX_FLOWS_LIMIT)).contains(&n) => Ok(n as u32),
        Ok(n) => Err(format!("a flow table of {n} flows is outside what one instance holds; {fix}")),
        Err(_) => Err(format!("'{}' is not a count; {fix}", chaos_model::spec::shorten(value, 40))),
    }
}

/// --max-peers: a count the trie can be sized to.
fn parse_max_peers(value: &str) -> Result<u32, String> {
    let fix = format!("give a count from 1 to {MAX_PEERS_LIMIT}, e.g. --max-peers 1000000");
    match value.trim().parse::<u64>() {
        Ok(n) if (1..=MAX_PEERS_LIMIT as u64).contains(&n) => Ok(n as u32),
        Ok(n) => Err(format!("{n} peer prefixes is outside what one trie holds; {fix}")),
        Err(_) => Err(format!("'{}' is not a count; {fix}", chaos_model::spec::shorten(value, 40))),
    }
}

#[derive(Subcommand)]
enum AgentCommand {
    /// List the faults the running agent holds: target, lease left, counters.
    Status {
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

pub fn run(args: AgentArgs, command: String) -> Result<i32> {
    match args.command {
        Some(AgentCommand::Status { output }) => status(&args.socket, output),
        None => {
            let metrics_addr = match args.metrics_addr {
                MetricsAddr::Off => None,
                MetricsAddr::At(addr) => Some(addr),
            };
            let netns = args.netns.iter().map(|n| chaos_datapath::netns::path_for(n)).collect();
            let kubernetes = if args.kubernetes { Some(kube_options(args.node_name, args.namespaces)?) } else { None };
            chaos_agent::set_warnings_only(args.log_level == LogLevel::Warn);
            chaos_agent::run(chaos_agent::Options {
                socket: args.socket,
                metrics_addr,
                prometheus_url: args.prometheus_url,
                netns,
                command,
                max_peers: args.max_peers,
                flows: args.flow_table,
                kubernetes,
            })?;
            Ok(0)
        }
    }
}

/// The controller's options: the node from --node-name or $NODE_NAME (exit 2 without).
fn kube_options(node: Option<String>, namespaces: Vec<String>) -> Result<chaos_agent::kubernetes::KubeOptions> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let node = node.or_else(|| env("NODE_NAME")).ok_or_else(|| {
        chaos_datapath::Error::unsupported(
            "--kubernetes needs the name of this node",
            "pass --node-name NAME, or set NODE_NAME (the Helm chart sets it from spec.nodeName)",
        )
    })?;
    let agent = match (env("POD_NAMESPACE"), env("POD_NAME")) {
        (Some(ns), Some(pod)) => format!("pod {ns}/{pod}"),
        _ => format!("pid {}", std::process::id()),
    };
    Ok(chaos_agent::kubernetes::KubeOptions { node, namespaces, agent, proc_root: "/proc".into() })
}

fn connect(socket: &Path) -> Result<Client> {
    chaos_agent::client::connect(socket)?.ok_or_else(|| {
        chaos_datapath::Error::unsupported(
            format!("no agent answers on {}", socket.display()),
            "start one (`sudo chaos-ebpf agent`), or pass --socket with the path it listens on",
        )
        .into()
    })
}

fn status(socket: &Path, output: Output) -> Result<i32> {
    let client = connect(socket)?;
    let health = client.health()?;
    let list = client.list()?;
    if output == Output::Json {
        output::out(&serde_json::to_string_pretty(&serde_json::json!({ "agent": health, "faults": list.faults }))?);
        return Ok(0);
    }
    output::out(&format!(
        "agent pid {} on {}: {} namespace(s) loaded ({}), {} fault(s)",
        health.pid,
        socket.display(),
        health.namespaces.len(),
        chaos_model::spec::list_some(health.namespaces.iter(), 4),
        list.faults.len()
    ));
    for f in &list.faults {
        output::out(&format!(
            "  fault {}: {}, lease left {} of {} ms, {}",
            f.id,
            f.fault,
            f.lease_left_ms,
            f.lease_ms,
            counters(&f.counters)
        ));
    }
    Ok(0)
}

fn counters(c: &RuleCounters) -> String {
    format!(
        "seen {} matched {} dropped {} passed {} delayed {} expired {}",
        c.seen, c.matched, c.dropped, c.passed, c.delayed, c.expired
    )
}

/// What `inject` does when an agent answers on `socket` (None: the old path). An
/// injection that asks for what the agent does not offer per fault (its own protected
/// ports, an attach mode, a run directory or a metrics endpoint of its own) takes the
/// old path, and says why.
pub fn agent_for_inject(socket: &Path, plan: &Plan, own_artifacts: bool) -> Result<Option<Client>> {
    let Some(client) = chaos_agent::client::connect(socket)? else { return Ok(None) };
    let why = if plan.protect != Protect::defaults() {
        Some("--force or --protect (the agent protects SSH and the API server for every fault)")
    } else if plan.attach != Attach::Auto {
        Some("--attach (the agent attaches as the kernel allows)")
    } else if own_artifacts {
        Some("--run-dir, --metrics-addr, --freeze-clock or --otlp-endpoint (a run's own artifacts)")
    } else if plan
        .steps
        .iter()
        .flat_map(|s| &s.faults)
        .any(|f| matches!(f.spec.target, chaos_model::spec::TargetSpec::Lab(_)))
    {
        Some("a lab target")
    } else if plan
        .steps
        .iter()
        .flat_map(|s| &s.faults)
        .any(|f| matches!(f.spec.target, chaos_model::spec::TargetSpec::ContainerLabel { .. }))
    {
        Some("a container-label target (one fault per container it names)")
    } else {
        None
    };
    if let Some(why) = why {
        output::err(&format!(
            "chaos-ebpf: not through the agent at {}: {why}; loading programs here",
            socket.display()
        ));
        return Ok(None);
    }
    Ok(Some(client))
}

/// The agent as the holder of a run's rules (`run` through the agent).
pub struct RemoteAgent {
    client: Client,
    pid: u32,
}

impl chaos_engine::remote::RemoteRules for RemoteAgent {
    fn describe(&self) -> String {
        format!("the agent at {} (pid {})", self.client.socket().display(), self.pid)
    }

    fn apply(&self, spec: &FaultSpec, seed: u64, rule_id: u32, lease: Duration) -> Result<RemoteFault> {
        let applied = self.client.apply_as(spec, lease, Some(seed), Some(rule_id))?;
        Ok(RemoteFault { id: applied.id, rules: remote_rules(&applied.rules) })
    }

    fn prepare(&self, target: &chaos_model::spec::TargetSpec) -> Result<()> {
        self.client.prepare(&target.to_string()).map(drop)
    }

    fn renew(&self, id: u64, lease: Duration) -> Result<()> {
        self.client.renew(id, lease).map(drop)
    }

    fn revert(&self, id: u64) -> Result<Vec<RemoteRule>> {
        Ok(remote_rules(&self.client.revert(id)?.rules))
    }

    fn counters(&self, id: u64) -> Result<Vec<RemoteRule>> {
        let list = self.client.list()?;
        let fault = list.faults.iter().find(|f| f.id == id).ok_or_else(|| {
            anyhow::anyhow!("the agent at {} no longer holds fault {id}", self.client.socket().display())
        })?;
        Ok(remote_rules(&fault.rules))
    }

    fn held(&self) -> Result<Vec<u64>> {
        Ok(self.client.list()?.faults.iter().map(|f| f.id).collect())
    }
}

fn remote_rules(rules: &[chaos_agent::api::RuleInfo]) -> Vec<RemoteRule> {
    rules.iter().map(|r| RemoteRule { netns: r.netns.clone(), counters: r.counters }).collect()
}

/// The agent that holds a run's rules when one answers on `socket` and the plan asks
/// for nothing it does not offer per fault (None: the run loads its own programs, and
/// says why when an agent answers).
pub fn agent_for_run(socket: &Path, plan: &Plan) -> Result<Option<RemoteAgent>> {
    let Some(client) = chaos_agent::client::connect(socket)? else { return Ok(None) };
    if let Some(why) = chaos_engine::remote::why_not_remote(plan) {
        output::err(&format!(
            "chaos-ebpf: not through the agent at {}: {why}; loading programs here (--no-agent says so up front)",
            socket.display()
        ));
        return Ok(None);
    }
    let pid = client.health()?.pid;
    Ok(Some(RemoteAgent { client, pid }))
}

/// `inject` through the agent: apply, renew the lease every third of it until the
/// duration is over (or Ctrl-C), revert, print the final counters.
pub fn inject(client: &Client, plan: &Plan, output: Output) -> Result<i32> {
    let interrupted = chaos_engine::run::install_signal_handlers()?;
    let step = &plan.steps[0];
    let spec = &step.faults[0].spec;
    let lease = plan.lease;
    let applied = client.apply(spec, lease, plan.seed)?;
    let started = Instant::now();
    output::err(&format!(
        "chaos-ebpf: fault {} applied by the agent at {} in {} us: {} (seed {}), for {}",
        applied.id,
        client.socket().display(),
        applied.apply_us,
        applied.fault,
        applied.seed,
        chaos_model::spec::format_duration(step.duration)
    ));
    let mut renewed = Instant::now();
    let mut cut_short = None;
    while started.elapsed() < step.duration && !interrupted.load(Ordering::Relaxed) {
        if renewed.elapsed() >= lease / 3 {
            match client.renew(applied.id, lease) {
                Ok(_) => renewed = Instant::now(),
                Err(e) => {
                    cut_short = Some(format!("{e:#}"));
                    break;
                }
            }
        }
        let left = step.duration.saturating_sub(started.elapsed());
        std::thread::sleep(left.min(Duration::from_millis(10)));
    }
    let reverted = client.revert(applied.id);
    let seconds = started.elapsed().as_secs_f64();
    let reverted = match (reverted, cut_short) {
        (Ok(reverted), None) => reverted,
        (Ok(_), Some(why)) | (Err(_), Some(why)) => {
            output::err(&format!("chaos-ebpf: the fault did not run its course: {why}"));
            return Ok(exit::FAILED);
        }
        (Err(e), None) => return Err(e),
    };
    match output {
        Output::Json => output::out(&serde_json::to_string_pretty(&reverted)?),
        Output::Text => {
            output::out(&format!(
                "fault {} {}: {} after {seconds:.1} s, reverted in {} us",
                reverted.id,
                reverted.fault,
                if interrupted.load(Ordering::Relaxed) { "interrupted" } else { "completed" },
                reverted.revert_us
            ));
            for r in &reverted.rules {
                output::out(&format!("  {} (rule {}): {}", r.netns, r.rule_id, counters(&r.counters)));
            }
        }
    }
    if interrupted.load(Ordering::Relaxed) {
        output::err("chaos-ebpf: interrupted: the fault was reverted");
        return Ok(exit::FAILED);
    }
    Ok(0)
}
