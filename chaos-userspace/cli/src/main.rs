//! chaos-ebpf: exact, deterministic, reversible network faults from Rust TC programs.

mod agent;
mod cleanup;
mod cluster_lab;
mod execute;
mod exit;
mod lab;
mod otlp;
mod output;
mod plan;
mod render;
mod replay;
mod report;
mod run_dir;
mod spans;
mod status;
mod validate;
mod verify;

use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use chaos_model::spec;
use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::{filter::LevelFilter, layer::SubscriberExt, util::SubscriberInitExt, Layer};

use chaos_model::inject::{self, InjectFault};

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
  sudo chaos-ebpf lab up --nodes 3 && sudo chaos-ebpf lab status && sudo chaos-ebpf lab down
  chaos-ebpf verify chaos-runs/20261127T154659Z-4242 --expect expect.yaml

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
        /// Run every check a run does (target, limits, sch_fq, privileges) and print the
        /// plan; change nothing.
        #[arg(long, global = true, display_order = 1000)]
        dry_run: bool,
        #[arg(long, global = true, display_order = 1001, value_enum, default_value_t = Output::Text)]
        output: Output,
        #[arg(long, global = true, display_order = 1002, value_name = "DIR", help = RUN_DIR_HELP)]
        run_dir: Option<PathBuf>,
        /// Serve Prometheus metrics at http://ADDR/metrics while the fault is up (IP:PORT,
        /// default 127.0.0.1:9464), or `off`.
        #[arg(long, global = true, display_order = 1003, value_name = "ADDR", value_parser = execute::parse_metrics_addr)]
        metrics_addr: Option<execute::MetricsAddr>,
        #[arg(long, global = true, display_order = 1004, help = FREEZE_CLOCK_HELP)]
        freeze_clock: bool,
        #[arg(long, global = true, display_order = 1005, value_name = "URL", value_parser = otlp::parse_endpoint, help = OTLP_HELP)]
        otlp_endpoint: Option<String>,
        /// Load the programs here even when an agent answers on --agent-socket (by
        /// default the fault goes through the agent: milliseconds, no program load).
        #[arg(long, global = true, display_order = 1006)]
        no_agent: bool,
        /// The socket of the agent to apply the fault through, when one answers there.
        #[arg(long, global = true, display_order = 1007, value_name = "PATH", default_value = chaos_agent::DEFAULT_SOCKET)]
        agent_socket: PathBuf,
    },
    /// Run the resident agent (programs loaded once, faults in milliseconds through a
    /// local API), or `agent status` to list what it holds.
    #[command(long_about = agent::AGENT_ABOUT)]
    Agent(agent::AgentArgs),
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
        #[arg(long, value_name = "DIR", help = RUN_DIR_HELP)]
        run_dir: Option<PathBuf>,
        /// Serve Prometheus metrics at http://ADDR/metrics while the run is up (IP:PORT,
        /// default 127.0.0.1:9464), or `off`.
        #[arg(long, value_name = "ADDR", value_parser = execute::parse_metrics_addr)]
        metrics_addr: Option<execute::MetricsAddr>,
        #[arg(long, help = FREEZE_CLOCK_HELP)]
        freeze_clock: bool,
        #[arg(long, value_name = "URL", value_parser = otlp::parse_endpoint, help = OTLP_HELP)]
        otlp_endpoint: Option<String>,
        /// Where the light-node lab a partition matrix acts on keeps its state (what `lab
        /// --state-dir` was given).
        #[arg(long, value_name = "DIR", default_value = chaos_lab::cluster::STATE_DIR)]
        lab_dir: PathBuf,
        /// Load the programs here even when an agent answers on --agent-socket (by
        /// default an agent holds the faults' rules: no program load, applies in
        /// milliseconds; the run keeps its timeline, checks, report and artifacts).
        #[arg(long)]
        no_agent: bool,
        /// The socket of the agent to hold the rules, when one answers there. Scenarios
        /// with a matrix, a ramp, an embedded lab, lab targets, their own protect list or
        /// attach mode load their own programs (the run says why).
        #[arg(long, value_name = "PATH", default_value = chaos_agent::DEFAULT_SOCKET)]
        agent_socket: PathBuf,
    },
    /// Run a recorded run again: the scenario and seed of its bundle (RUN_DIR.tar.gz), on
    /// a lab of the same shape, then compare the outcome and the digest with the recorded
    /// ones. Exit 0 when the new run passes with the same outcome, 1 otherwise.
    Replay {
        /// The bundle a run wrote next to its run directory.
        bundle: PathBuf,
        #[arg(long, value_name = "DIR", help = RUN_DIR_HELP)]
        run_dir: Option<PathBuf>,
        /// The comparison as text or JSON (the run's own report is in its directory).
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
    /// Check the spans a run recorded (RUN_DIR/spans.jsonl) against a YAML file of
    /// expectations (docs/telemetry.md). Exit 0 when all hold; 1 with one line per failed
    /// expectation; 2 when FILE or RUN_DIR cannot be read.
    Verify {
        /// A run directory (`run` or `inject` with --run-dir, or chaos-runs/<run-id>).
        run_dir: PathBuf,
        /// The expectations: `spans:` (name, parent, attributes, status, count) and
        /// `order:` (before, after).
        #[arg(long, value_name = "FILE")]
        expect: PathBuf,
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
        /// Write the cleanup's span to DIR/spans.jsonl (a new or empty directory), for
        /// `verify`; none when left out.
        #[arg(long, value_name = "DIR")]
        run_dir: Option<PathBuf>,
    },
    /// A lab of real etcd members with TLS and Prometheus to break: `lab up`, `lab
    /// status`, `lab down`.
    #[command(long_about = lab::LAB_ABOUT)]
    Lab {
        #[command(subcommand)]
        command: lab::LabCommand,
        /// Where the lab keeps its state (tests use their own, so as not to meet a user's lab).
        #[arg(long, global = true, hide = true, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
}

const RUN_DIR_HELP: &str = "Where the run's record is written: spans.jsonl (one JSON object per closed span: run, \
step, inject, revert, cleanup, probe, abort), events.jsonl, run.log (the stderr lines), report.json, metrics-{before,during,after}.prom, report.md, junit.xml, report.html (charts, opens offline), \
cleanup.json, topology.json, plan.json, scenario.yaml, digest.txt (SHA-256 of the normalised trace: the same for the same \
scenario and seed), meta.json, and DIR.tar.gz beside it with all of them (docs/telemetry.md). A new or empty directory \
[default: chaos-runs/<run-id> under the current directory, run-id = UTC time and pid, e.g. 20261127T154659Z-4242]";

const FREEZE_CLOCK_HELP: &str = "Record wall-clock stamps in the run directory (report.json's and events.jsonl's \
*_unix_ms, spans.jsonl's times, meta.json, the mtimes in DIR.tar.gz) as 2000-01-01T00:00:00Z plus their offset from \
the run's start, so that the artifacts of two runs differ only in what was measured";

const OTLP_HELP: &str = "Also send the run's spans to an OpenTelemetry collector: OTLP over HTTP with protobuf, to \
URL/v1/traces (URL such as http://127.0.0.1:4318). Without it, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or \
OTEL_EXPORTER_OTLP_ENDPOINT turn the export on. A collector that fails or cannot be reached costs a warning, not the \
run; at exit the export waits at most 5 s";

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

/// Longest error line printed; messages are built short, this is the backstop for text
/// that comes from elsewhere (the kernel, a library, a path).
const MAX_ERROR_LINE: usize = 300;

fn main() -> ExitCode {
    // Runs and injections catch Ctrl-C from their first moment (chaos-engine run.rs); other
    // commands keep the default: they change nothing.
    let args: Vec<String> = std::env::args().collect();
    if args.iter().skip(1).any(|a| a == "run" || a == "inject") {
        if let Err(e) = chaos_engine::run::install_signal_handlers() {
            output::err(&format!("chaos-ebpf: error: {e:#}"));
            return ExitCode::from(exit::FAILED as u8);
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
            return ExitCode::from(exit::USAGE as u8);
        }
    };
    // Spans go to an OTLP collector only from runs (not dry ones); a bad endpoint is bad
    // input, refused before anything changes.
    let export = match otlp_endpoint(&cli).and_then(|url| url.map(otlp::Export::start).transpose()) {
        Ok(export) => export,
        Err(e) => {
            output::err(&clip_lines(&format!("chaos-ebpf: error: {e:#}")));
            return ExitCode::from(exit::code(&e) as u8);
        }
    };
    // What the datapath and the lab can only report, not return (a revert problem in a
    // Drop): on stderr, one line each.
    // Spans of runs go to the run directory's spans.jsonl (spans.rs), once a run sets it.
    let subscriber = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .without_time()
                .with_target(false)
                .with_filter(LevelFilter::INFO),
        )
        .with(spans::SpanFile::new());
    // Not an Option layer: tracing-subscriber's Option<Layer> does not pass on
    // on_register_dispatch, which the OTLP layer needs.
    match &export {
        Some(export) => subscriber.with(export.layer()).init(),
        None => subscriber.init(),
    }
    let code = match dispatch(cli) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            output::err(&clip_lines(&format!("chaos-ebpf: error: {e:#}")));
            ExitCode::from(exit::code(&e) as u8)
        }
    };
    // Every span has closed: the last ones are sent (bounded), also after an interrupted
    // or failed run.
    if let Some(export) = export {
        export.finish();
    }
    code
}

/// The OTLP endpoint of a run or injection (the flag, else the environment); none for
/// other commands and dry runs.
fn otlp_endpoint(cli: &Cli) -> Result<Option<String>> {
    match &cli.command {
        Command::Inject { dry_run: false, otlp_endpoint, .. } | Command::Run { dry_run: false, otlp_endpoint, .. } => {
            otlp::endpoint(otlp_endpoint.as_deref())
        }
        _ => Ok(None),
    }
}

/// Every line cut to `MAX_ERROR_LINE` characters.
fn clip_lines(text: &str) -> String {
    text.lines().map(|line| spec::shorten(line, MAX_ERROR_LINE - 3)).collect::<Vec<_>>().join("\n")
}

fn dispatch(cli: Cli) -> Result<i32> {
    let command_line = std::env::args().collect::<Vec<_>>().join(" ");
    match cli.command {
        Command::Inject {
            fault,
            dry_run,
            output,
            run_dir,
            metrics_addr,
            freeze_clock,
            otlp_endpoint,
            no_agent,
            agent_socket,
        } => {
            let plan = inject::plan(fault)?;
            if !dry_run && !no_agent {
                let own_artifacts =
                    run_dir.is_some() || metrics_addr.is_some() || freeze_clock || otlp_endpoint.is_some();
                if let Some(client) = agent::agent_for_inject(&agent_socket, &plan, own_artifacts)? {
                    return agent::inject(&client, &plan, output);
                }
            }
            let artifacts = report::Options { scenario_file: None, freeze_clock, lab_members: None };
            let lab_dir = std::path::Path::new(chaos_lab::cluster::STATE_DIR);
            let invocation = execute::Invocation { command: command_line, agent_socket: None };
            execute::execute(&plan, dry_run, output, metrics_addr, invocation, run_dir, lab_dir, artifacts)
        }
        Command::Run {
            file,
            seed,
            dry_run,
            output,
            run_dir,
            metrics_addr,
            freeze_clock,
            lab_dir,
            no_agent,
            agent_socket,
            ..
        } => {
            let mut plan = validate::load(&file)?;
            if seed.is_some() {
                plan.seed = seed;
            }
            let artifacts = report::Options { scenario_file: Some(file), freeze_clock, lab_members: None };
            let agent_socket = (!dry_run && !no_agent).then_some(agent_socket);
            let invocation = execute::Invocation { command: command_line, agent_socket };
            execute::execute(&plan, dry_run, output, metrics_addr, invocation, run_dir, &lab_dir, artifacts)
        }
        Command::Replay { bundle, run_dir, output } => replay::run(&bundle, run_dir, output),
        Command::Validate { file } => validate::run(&file),
        Command::Plan { file, seed, output } => plan::run(&file, seed, output),
        Command::Verify { run_dir, expect } => verify::run(&run_dir, &expect),
        Command::Status { output } => status::run(output == Output::Json),
        Command::Cleanup { force, output, run_dir } => cleanup::run(force, output == Output::Json, run_dir),
        Command::Lab { command, state_dir } => lab::run(command, state_dir),
        Command::Agent(args) => agent::run(args, command_line),
    }
}
