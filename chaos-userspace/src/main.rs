//! chaos-ebpf: exact, deterministic, reversible network faults from Rust TC programs.

mod bpfsys;
mod cleanup;
mod devices;
mod error;
mod lab;
mod loader;
mod locate;
mod netlink;
mod netns;
mod output;
mod plan;
mod preflight;
mod runner;
mod scenario;
mod spec;
mod state;
mod status;
mod target;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Result;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    error::{exit_code, Failure},
    loader::AttachMode,
    plan::{Plan, PlannedFault, PlannedStep, Protect},
    spec::{BadValue, Cidr, Direction, Distribution, FaultKind, PartitionMode, PortRange, Proto, RawFault, TargetSpec},
};

const ABOUT: &str = "Exact, deterministic, reversible network faults from eBPF TC programs.";

const LONG_ABOUT: &str = "\
Exact, deterministic, reversible network faults from eBPF TC programs.

Faults are TC classifiers (TCX links on Linux >= 6.6) that drop packets of one target by
a seeded hash of (seed, flow, packet index): the same seed and traffic give the same
drops on every run. Every rule holds a lease the running process renews: if chaos-ebpf
hangs, faults end when the lease runs out; if it dies, TCX links go with it at once.

Examples:
  sudo chaos-ebpf inject loss --target netns:a --probability 0.3 --duration 30s --seed 7
  sudo chaos-ebpf inject partition --target netns:a --peer 192.0.2.2/32 --mode both --duration 30s
  sudo chaos-ebpf inject blackhole --target pid:4242 --proto udp --ports 443 --duration 1m
  sudo chaos-ebpf inject delay --target netns:a --delay 100ms --jitter 10ms --duration 1m
  sudo chaos-ebpf inject rate --target iface:eth1 --rate 10mbit --duration 1m
  sudo chaos-ebpf run scenarios/lab-demo.yaml
  chaos-ebpf validate scenario.yaml && chaos-ebpf plan scenario.yaml
  sudo chaos-ebpf status --output json
  sudo chaos-ebpf cleanup

Durations: 500ms, 30s, 5m, 1h, 2d or 1m30s; at most 7 days each and for a whole run.
Running faults, status and cleanup need root (CAP_SYS_ADMIN and CAP_NET_ADMIN in the
host's user namespace); validate, plan and --dry-run need none.

Exit codes: 0 success; 1 the experiment failed or was interrupted (faults reverted);
2 bad input or an environment that cannot do what was asked (nothing was changed).";

#[derive(Parser)]
#[command(name = "chaos-ebpf", version, about = ABOUT, long_about = LONG_ABOUT)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inject one fault now, for a duration (Ctrl-C reverts it early).
    Inject {
        #[command(subcommand)]
        fault: InjectFault,
    },
    /// Run a YAML scenario: targets and timed steps (see docs/scenarios.md).
    Run {
        /// The scenario file.
        file: PathBuf,
        /// Use this seed instead of the scenario's.
        #[arg(long)]
        seed: Option<u64>,
        /// Run every check a run does (targets, limits, sch_fq, privileges) and print the
        /// plan; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Check a scenario file; errors name file:line:column and the fix.
    Validate { file: PathBuf },
    /// Print a scenario's exact timeline and map entries without touching the kernel.
    Plan {
        file: PathBuf,
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Show running experiments: their rules, attachments and live counters.
    Status {
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Find and remove whatever chaos-ebpf left behind (attachments of crashed or hung
    /// runs, clsact qdiscs it added, lab namespaces), then verify. Exit 0 only when clean.
    Cleanup {
        /// Also detach the faults of live runs, running or stopped (SIGSTOP).
        #[arg(long, alias = "all")]
        force: bool,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
enum InjectFault {
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
}

#[derive(Args)]
struct CommonArgs {
    /// What to fault: iface:NAME, netns:NAME (all its interfaces but lo), cgroup:PATH
    /// (egress only) or pid:PID (its cgroup, egress only).
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
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    attach: AttachMode,
    /// Also protect this port range from faults (tcp:PORT or udp:LO-HI; repeatable).
    #[arg(long = "protect", value_parser = parse_with::<Protect>)]
    protect: Vec<Protect>,
    /// Fault protected traffic too (SSH tcp:22, the Kubernetes API tcp:6443).
    #[arg(long)]
    force: bool,
    /// Run every check a run does (target, limits, sch_fq, privileges) and print the
    /// plan; change nothing.
    #[arg(long)]
    dry_run: bool,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

fn parse_with<T: std::str::FromStr<Err = BadValue>>(s: &str) -> Result<T, String> {
    s.parse::<T>().map_err(|e| format!("{}\n  fix: {}", e.problem, e.fix))
}

/// Longest error line printed; messages are built short, this is the backstop for text
/// that comes from elsewhere (the kernel, a library, a path).
const MAX_ERROR_LINE: usize = 300;

fn main() -> ExitCode {
    // Runs and injections catch Ctrl-C from their first moment (runner.rs); other
    // commands keep the default: they change nothing.
    let args: Vec<String> = std::env::args().collect();
    if args.iter().skip(1).any(|a| a == "run" || a == "inject") {
        if let Err(e) = runner::install_signal_handlers() {
            output::err(&format!("chaos-ebpf: error: {e:#}"));
            return ExitCode::from(error::EXIT_FAILED as u8);
        }
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap echoes the offending value; keep its lines short too (help and
            // version are printed as they are).
            if !e.use_stderr() {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            output::err(&clip_lines(&e.render().to_string()));
            return ExitCode::from(error::EXIT_USAGE as u8);
        }
    };
    match dispatch(cli) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            output::err(&clip_lines(&format!("chaos-ebpf: error: {e:#}")));
            ExitCode::from(exit_code(&e) as u8)
        }
    }
}

/// Every line cut to `MAX_ERROR_LINE` characters.
fn clip_lines(text: &str) -> String {
    text.lines().map(|line| spec::shorten(line, MAX_ERROR_LINE - 3)).collect::<Vec<_>>().join("\n")
}

fn dispatch(cli: Cli) -> Result<i32> {
    let command_line = std::env::args().collect::<Vec<_>>().join(" ");
    match cli.command {
        Command::Inject { fault } => {
            let (plan, dry_run, output) = inject_plan(fault)?;
            execute(&plan, dry_run, output, command_line)
        }
        Command::Run { file, seed, dry_run, output } => {
            let mut plan = load_scenario(&file)?;
            if seed.is_some() {
                plan.seed = seed;
            }
            execute(&plan, dry_run, output, command_line)
        }
        Command::Validate { file } => {
            let plan = load_scenario(&file)?;
            output::out(&format!(
                "{}: valid: {} steps, {} faults, {} in all",
                file.display(),
                plan.steps.len(),
                plan.steps.iter().map(|s| s.faults.len()).sum::<usize>(),
                spec::format_duration(plan.total_duration())
            ));
            Ok(0)
        }
        Command::Plan { file, seed, output } => {
            let mut plan = load_scenario(&file)?;
            if seed.is_some() {
                plan.seed = seed;
            }
            print_plan(&plan, output);
            Ok(0)
        }
        Command::Status { output } => status::run(output == Output::Json),
        Command::Cleanup { force, output } => cleanup::run(force, output == Output::Json),
    }
}

fn load_scenario(file: &std::path::Path) -> Result<Plan> {
    scenario::load(file).map_err(|e| {
        anyhow::Error::new(Failure::input(e.to_string().lines().next().unwrap_or("").to_owned(), e.fix.clone()))
    })
}

fn print_plan(plan: &Plan, output: Output) {
    let seed = plan.seed_or_random();
    match output {
        Output::Json => {
            let value = serde_json::json!({ "plan": plan, "seed": seed, "entries": plan.entries(seed) });
            output::out(&serde_json::to_string_pretty(&value).expect("serialisable"));
        }
        Output::Text => output::out_raw(&plan.render_text(seed, plan.seed.is_some())),
    }
}

fn execute(plan: &Plan, dry_run: bool, output: Output, command: String) -> Result<i32> {
    // The same checks for a dry run and a run: what one accepts, the other does.
    let checked = preflight::check(plan, dry_run)?;
    if dry_run {
        for (target, resolved) in &checked.resolved {
            for r in resolved {
                let names = spec::list_some(r.interfaces.iter().map(|i| &i.name), 8);
                output::err(&format!("chaos-ebpf: dry run: {target} resolves to {} ({names})", r.netns.path.display()));
            }
        }
        if !checked.missing_privileges.is_empty() {
            output::err(&format!(
                "chaos-ebpf: dry run without privileges ({}): a run would fail with exit 2",
                checked.missing_privileges.join("; ")
            ));
        }
        for what in &checked.unchecked {
            output::err(&format!("chaos-ebpf: dry run: not checked without privileges: {what}"));
        }
        print_plan(plan, output);
        return Ok(0);
    }
    drop(checked);
    let report = runner::run(plan, &runner::RunOptions { command, progress: true })?;
    match output {
        Output::Json => output::out(&serde_json::to_string_pretty(&report)?),
        Output::Text => output::out(&runner::render_report(&report)),
    }
    if !report.clean {
        output::err(&clip_lines(&format!(
            "chaos-ebpf: error: the faults ended but the revert is not verified clean ({}); run `chaos-ebpf cleanup`",
            report.revert_problems.join("; ")
        )));
        return Ok(error::EXIT_FAILED);
    }
    if let Some(reason) = &report.failed {
        output::err(&format!("chaos-ebpf: a fault did not run its course: {reason}; every fault was reverted"));
        return Ok(error::EXIT_FAILED);
    }
    if report.interrupted {
        output::err("chaos-ebpf: interrupted: every fault was reverted");
        return Ok(error::EXIT_FAILED);
    }
    Ok(0)
}

fn inject_plan(fault: InjectFault) -> Result<(Plan, bool, Output)> {
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
    };
    raw.kind = Some(kind);
    raw.target = Some(common.target.clone());
    raw.peers = common.peers.clone();
    raw.proto = common.proto;
    raw.ports = common.ports;
    raw.direction = common.direction;
    raw.shadow = common.shadow;
    let spec = raw.validate().map_err(|e| {
        let flag = match e.field {
            "burst" => "--burst-enter/--burst-exit/--burst-loss".to_owned(),
            field => format!("--{field}"),
        };
        Failure::input(format!("{flag}: {}", e.problem), e.fix)
    })?;
    if common.duration.is_zero() {
        return Err(
            Failure::input("--duration: a fault of zero duration does nothing", "give a duration such as 30s").into()
        );
    }
    if common.lease < Duration::from_millis(300) || common.lease > Duration::from_secs(300) {
        return Err(Failure::input("--lease must be within 300ms..5m", "1s-30s is typical; the default is 3s").into());
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
        steps: vec![PlannedStep {
            name: kind.name().into(),
            start: Duration::ZERO,
            duration: common.duration,
            faults: vec![PlannedFault { rule_id: 1, spec }],
        }],
    };
    plan.check_limits().map_err(|e| {
        let flag = match e.field {
            "protect" => "--protect",
            "peers" => "--peer",
            "duration" => "--duration",
            _ => "the fault",
        };
        Failure::input(format!("{flag}: {}", e.problem), e.fix)
    })?;
    Ok((plan, common.dry_run, common.output))
}
