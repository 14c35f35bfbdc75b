//! The faults as `chaos-ebpf inject` takes them on the command line: one subcommand per
//! fault kind with its own flags, the flags every fault shares, and the one-step plan
//! they become. Derived here, beside the specs (feature `clap`, which only the CLI turns
//! on), so that a new fault kind is added in the model alone.

use std::time::Duration;

use clap::{Args, Subcommand};

use crate::{
    plan::{Attach, Plan, PlannedFault, PlannedStep, Protect},
    spec::{
        self, Cidr, Direction, Distribution, FaultKind, PartitionMode, PortRange, Problem, Proto, RawFault, TargetSpec,
        TlsMode, TlsVersion,
    },
};

/// clap's value parser for any value the model parses.
fn parse_with<T: std::str::FromStr<Err = Problem>>(s: &str) -> Result<T, String> {
    s.parse::<T>().map_err(|e| format!("{}\n  fix: {}", e.problem, e.fix))
}

#[derive(Subcommand)]
pub enum InjectFault {
    /// Drop matched packets with a probability, optionally in bursts (Gilbert-Elliott).
    Loss {
        /// Loss probability, 0..1 (or a percentage: 30%).
        #[arg(long, value_parser = spec::parse_probability)]
        probability: f64,
        /// Burst model: probability per packet of entering the lossy state.
        #[arg(long, value_parser = spec::parse_probability, requires = "burst_exit")]
        burst_enter: Option<f64>,
        /// Burst model: probability per packet of leaving the lossy state.
        #[arg(long, value_parser = spec::parse_probability, requires = "burst_enter")]
        burst_exit: Option<f64>,
        /// Burst model: loss probability in the lossy state [default: 1].
        #[arg(long, value_parser = spec::parse_probability, requires = "burst_enter")]
        burst_loss: Option<f64>,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Cut the target off from its peers: both ways, one way, or new connections only.
    Partition {
        /// both: nothing passes either way; oneway: only --direction is cut;
        /// new: new TCP connections fail, established ones keep working.
        #[arg(long, value_parser = parse_with::<PartitionMode>, default_value = "both")]
        mode: PartitionMode,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Drop one protocol and port set, e.g. --proto udp --ports 443 to force QUIC
    /// clients back to TCP.
    Blackhole {
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Delay matched packets on egress by setting their earliest departure time (needs
    /// sch_fq, which chaos-ebpf installs on the target's interfaces and removes after).
    Delay {
        /// Base delay (e.g. 100ms).
        #[arg(long, value_parser = spec::parse_duration)]
        delay: Duration,
        /// Jitter around the delay (e.g. 10ms); packets of one flow never reorder.
        #[arg(long, value_parser = spec::parse_duration)]
        jitter: Option<Duration>,
        /// Jitter shape: uniform in [delay-jitter, delay+jitter], or normal with sd jitter.
        #[arg(long, value_parser = parse_with::<Distribution>, requires = "jitter")]
        distribution: Option<Distribution>,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Limit the target's egress bandwidth by pacing departure times (needs sch_fq, as
    /// delay does).
    Rate {
        /// Bandwidth: 500kbit, 10mbit, 1gbit.
        #[arg(long, value_parser = spec::parse_rate)]
        rate: u64,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Refuse TLS ClientHellos (TCP, port 443 unless --ports) that offer one of these ALPN
    /// protocols or TLS versions, e.g. --alpn h2 so clients fall back to HTTP/1.1.
    TlsRefuse {
        /// ALPN protocols to refuse (comma-separated or repeated; at most 4): h2, http/1.1.
        #[arg(long, value_delimiter = ',', value_parser = spec::parse_alpn)]
        alpn: Vec<String>,
        /// TLS versions to refuse (comma-separated): 1.0, 1.1, 1.2, 1.3.
        #[arg(long = "tls-versions", value_delimiter = ',', value_parser = parse_with::<TlsVersion>)]
        tls_versions: Vec<TlsVersion>,
        /// reset: the client gets a TCP reset at once; drop: the connection goes silent
        /// and the client times out.
        #[arg(long, value_parser = parse_with::<TlsMode>, default_value = "reset")]
        mode: TlsMode,
        #[command(flatten)]
        common: CommonArgs,
    },
}

#[derive(Args)]
pub struct CommonArgs {
    /// What to fault: iface:NAME, netns:NAME (all its interfaces but lo), cgroup:PATH
    /// (egress only), pid:PID (its cgroup, egress only), container:NAME (a Docker
    /// container's interfaces, found through the Docker API: /var/run/docker.sock or
    /// DOCKER_HOST) or container-label:KEY=VALUE (every running container with it).
    #[arg(long, value_parser = parse_with::<TargetSpec>)]
    target: TargetSpec,
    /// Only traffic to/from these addresses or prefixes (repeatable; IPv4 and IPv6).
    #[arg(long = "peer", value_parser = parse_with::<Cidr>)]
    peers: Vec<Cidr>,
    /// Only this protocol: tcp, udp, icmp, any.
    #[arg(long, value_parser = parse_with::<Proto>)]
    proto: Option<Proto>,
    /// Only packets whose source or destination port is in this range (443 or 8000-8100).
    #[arg(long, value_parser = parse_with::<PortRange>)]
    ports: Option<PortRange>,
    /// egress (sent by the target), ingress (received) or both [default: both; egress
    /// for cgroup and pid targets].
    #[arg(long, value_parser = parse_with::<Direction>)]
    direction: Option<Direction>,
    /// How long the fault lasts (500ms, 30s, 5m, 1h; at most 7d).
    #[arg(long, value_parser = spec::parse_duration)]
    duration: Duration,
    /// Seed of every drop decision; the same seed and traffic give the same drops.
    /// Drawn at random (and printed) when not given.
    #[arg(long)]
    seed: Option<u64>,
    /// Count what the fault would drop, drop nothing.
    #[arg(long)]
    shadow: bool,
    /// How long a rule survives without renewal (if chaos-ebpf hangs, the fault ends
    /// after this); 300ms..5m.
    #[arg(long, value_parser = spec::parse_duration, default_value = "3s")]
    lease: Duration,
    /// TC attachment: auto (TCX on >= 6.6, else netlink), tcx, netlink.
    #[arg(long, value_parser = parse_with::<Attach>, default_value = "auto")]
    attach: Attach,
    /// Also protect this port range from faults (tcp:PORT or udp:LO-HI; repeatable).
    #[arg(long = "protect", value_parser = parse_with::<Protect>)]
    protect: Vec<Protect>,
    /// Fault protected traffic too (SSH tcp:22, the Kubernetes API tcp:6443).
    #[arg(long)]
    force: bool,
}

/// The plan of an `inject` command: one step with one fault; a problem names the flag.
pub fn plan(fault: InjectFault) -> Result<Plan, Problem> {
    let (kind, common, mut raw) = match fault {
        InjectFault::Loss { probability, burst_enter, burst_exit, burst_loss, common } => (
            FaultKind::Loss,
            common,
            RawFault { probability: Some(probability), burst_enter, burst_exit, burst_loss, ..RawFault::default() },
        ),
        InjectFault::Partition { mode, common } => {
            (FaultKind::Partition, common, RawFault { mode: Some(mode), ..RawFault::default() })
        }
        InjectFault::Blackhole { common } => (FaultKind::Blackhole, common, RawFault::default()),
        InjectFault::Delay { delay, jitter, distribution, common } => {
            (FaultKind::Delay, common, RawFault { delay: Some(delay), jitter, distribution, ..RawFault::default() })
        }
        InjectFault::Rate { rate, common } => {
            (FaultKind::Rate, common, RawFault { rate: Some(rate), ..RawFault::default() })
        }
        InjectFault::TlsRefuse { alpn, tls_versions, mode, common } => {
            (FaultKind::TlsRefuse, common, RawFault { alpn, tls_versions, tls_mode: Some(mode), ..RawFault::default() })
        }
    };
    raw.kind = Some(kind);
    raw.target = Some(common.target.clone());
    raw.peers = common.peers.clone();
    raw.proto = common.proto;
    raw.ports = common.ports;
    raw.direction = common.direction;
    raw.shadow = common.shadow;
    let spec = raw.validate().map_err(|e| {
        let flag = match e.at.field {
            "burst" => "--burst-enter/--burst-exit/--burst-loss".to_owned(),
            field => format!("--{field}"),
        };
        Problem::new(format!("{flag}: {}", e.problem), e.fix)
    })?;
    if common.duration.is_zero() {
        return Err(Problem::new("--duration: a fault of zero duration does nothing", "give a duration such as 30s"));
    }
    if common.lease < Duration::from_millis(300) || common.lease > Duration::from_secs(300) {
        return Err(Problem::new("--lease must be within 300ms..5m", "1s-30s is typical; the default is 3s"));
    }
    let mut protect = if common.force { Vec::new() } else { Protect::defaults() };
    protect.extend(common.protect.iter().copied());
    let plan = Plan {
        name: format!("inject {}", kind.name()),
        description: None,
        seed: common.seed,
        lease: common.lease,
        attach: common.attach,
        protect,
        lab: None,
        cluster: None,
        steps: vec![PlannedStep {
            // The run's seed itself (filled in below when drawn): `inject --seed N` decides
            // as the shared hash with N, and the seed a run prints repeats it.
            seed: common.seed,
            ..PlannedStep::simple(
                kind.name().into(),
                Duration::ZERO,
                common.duration,
                vec![PlannedFault { rule_id: 1, spec, lab_peers: Vec::new(), matrix: None }],
            )
        }],
        hypothesis: None,
        abort: Vec::new(),
    };
    let mut plan = plan;
    if plan.seed.is_none() {
        let seed = plan.seed_or_random();
        plan.seed = Some(seed);
        plan.steps[0].seed = Some(seed);
    }
    plan.check_limits().map_err(|e| {
        let flag = match e.at.field {
            "protect" => "--protect",
            "peers" => "--peer",
            "duration" => "--duration",
            _ => "the fault",
        };
        Problem::new(format!("{flag}: {}", e.problem), e.fix)
    })?;
    Ok(plan)
}
