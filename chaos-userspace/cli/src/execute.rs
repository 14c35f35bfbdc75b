//! `chaos-ebpf run` and `inject` after their plan is made: the preflight checks shared
//! with `--dry-run`, the metrics endpoint, the lab, the run, and its report and exit code.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Result;
use chaos_engine::{
    metrics::{Metrics, MetricsServer},
    run::{self, Fanout, RunOptions},
};
use chaos_lab::Lab;
use chaos_model::plan::Plan;

use crate::{clip_lines, exit, output, render, render::Progress, Output};

/// Who runs a plan: the command line (for the ledger), and the socket of an agent to
/// hold the rules when one answers there (None: the run loads its own programs).
pub struct Invocation {
    pub command: String,
    pub agent_socket: Option<PathBuf>,
}

/// Runs a plan (or only checks it, for a dry run) and reports. `lab_dir`: where the
/// light-node lab keeps its state, for partition matrices.
#[allow(clippy::too_many_arguments)] // each is one of the run command's options
pub fn execute(
    plan: &Plan,
    dry_run: bool,
    output: Output,
    metrics_addr: Option<MetricsAddr>,
    invocation: Invocation,
    run_dir: Option<PathBuf>,
    lab_dir: &std::path::Path,
    mut artifacts: crate::report::Options,
) -> Result<i32> {
    // Lab members named by role are bound to who they are now (the lab is asked once,
    // so `minority` and `majority` never overlap); actions ask again when they fire.
    let cluster = crate::cluster_lab::open_for(plan)?;
    let (bound, bindings) = chaos_engine::action::bind_lab_targets(plan, cluster.as_deref())?;
    for line in &bindings {
        output::err(&format!("chaos-ebpf: lab: {line}"));
    }
    // container-label: selectors, bound to the containers that have the label now.
    let (bound, bindings) = chaos_engine::container::bind_container_labels(&bound)?;
    for line in &bindings {
        output::err(&format!("chaos-ebpf: docker: {line}"));
    }
    // A partition matrix's nodes, bound to their addresses in the light-node lab.
    let fabric = crate::cluster_lab::light_fabric(&bound, lab_dir)?;
    let (bound, matrices) = chaos_engine::matrix::bind_matrices(&bound, fabric.as_ref())?;
    for line in &matrices {
        output::err(&format!("chaos-ebpf: lab: {line}"));
    }
    let plan = &bound;
    if let Some(lab) = &cluster {
        artifacts.lab_members = Some(lab.view()?.members.len());
    }
    // The same checks for a dry run and a run: what one accepts, the other does.
    let checked = chaos_engine::preflight::check(plan, dry_run)?;
    if dry_run {
        for (target, resolved) in &checked.resolved {
            for r in resolved {
                let names = chaos_model::spec::list_some(r.interfaces.iter().map(|i| &i.name), 8);
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
        crate::plan::print(plan, output);
        return Ok(0);
    }
    drop(checked);
    let remote = match &invocation.agent_socket {
        Some(socket) => crate::agent::agent_for_run(socket, plan)?,
        None => None,
    };
    let remote = remote.map(|r| std::sync::Arc::new(r) as std::sync::Arc<dyn chaos_engine::remote::RemoteRules>);
    // Created once the checks passed, before anything changes: a bad run directory is
    // bad input (exit 2) and changes nothing.
    let run_dir = crate::run_dir::create(run_dir)?;
    output::err(&format!("chaos-ebpf: run directory {}", run_dir.display()));
    // Before anything changes: a port in use is bad input (exit 2, nothing changed).
    // Collected also without the endpoint: the run directory gets their snapshots.
    let metrics = Metrics::new().with_snapshots(&run_dir);
    let server = serve_metrics(metrics_addr, &metrics)?;
    if let Some(server) = &server {
        output::err(&format!("chaos-ebpf: metrics at http://{}/metrics while the run is up", server.addr()));
    }
    // The lab comes first: its namespaces are targets. Its probe measures each step.
    let lab = plan.lab.as_ref().map(Lab::create).transpose()?;
    let probe = lab.as_ref().map(Lab::start_probe).transpose()?.flatten();
    let mut progress = Progress::new(output == Output::Json);
    let mut metrics = metrics;
    let mut events = crate::report::events::EventFile::create(&run_dir.join("events.jsonl"));
    let mut observers = Fanout::new(vec![&mut progress, &mut metrics, &mut events]);
    let report = run::run(
        plan,
        &RunOptions { command: invocation.command, lab: cluster, remote },
        probe.as_ref().map(|p| p as &dyn run::Probe),
        &mut observers,
    );
    drop(observers);
    for problem in metrics.snapshot_problems() {
        output::err(&format!("chaos-ebpf: warning: metrics snapshot: {problem}"));
    }
    // The endpoint ends with the run.
    drop(server);
    let report = report?;
    drop(probe);
    drop(lab);
    if let Err(e) = std::fs::write(run_dir.join("report.json"), serde_json::to_string_pretty(&report)? + "\n") {
        output::err(&format!("chaos-ebpf: warning: cannot write {}: {e}", run_dir.join("report.json").display()));
    }
    // report.md, junit.xml, report.html, ... (report/mod.rs): a file that cannot be
    // written is a warning, not a failed run.
    for warning in crate::report::write_all(&run_dir, plan, &report, &artifacts) {
        output::err(&clip_lines(&format!("chaos-ebpf: warning: {warning}")));
    }
    match output {
        Output::Json => output::out(&serde_json::to_string_pretty(&report)?),
        Output::Text => output::out(&render::report(&report)),
    }
    if !report.clean {
        output::err(&clip_lines(&format!(
            "chaos-ebpf: error: the faults ended but the revert is not verified clean ({}); run `chaos-ebpf cleanup`",
            report.revert_problems.join("; ")
        )));
        return Ok(exit::FAILED);
    }
    if let Some(reason) = &report.failed {
        output::err(&format!("chaos-ebpf: a fault did not run its course: {reason}; every fault was reverted"));
        return Ok(exit::FAILED);
    }
    if let Some(abort) = &report.abort {
        output::err(&clip_lines(&format!(
            "chaos-ebpf: aborted: the {} guard fired at {:.1}s: {}; every fault was reverted in {:.1} ms",
            abort.guard, abort.fired_s, abort.reason, abort.revert_ms
        )));
        return Ok(exit::FAILED);
    }
    if let Some(hypothesis) = &report.hypothesis {
        if hypothesis.verdict != chaos_engine::report::Verdict::Passed {
            output::err(&clip_lines(&format!(
                "chaos-ebpf: the hypothesis {}: {}",
                if hypothesis.verdict == chaos_engine::report::Verdict::Failed { "failed" } else { "was not judged" },
                hypothesis.reason.as_deref().unwrap_or("see the report")
            )));
            return Ok(exit::FAILED);
        }
    }
    if report.interrupted {
        output::err("chaos-ebpf: interrupted: every fault was reverted");
        return Ok(exit::FAILED);
    }
    Ok(0)
}

/// Where `--metrics-addr` says to serve the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsAddr {
    Off,
    At(SocketAddr),
}

/// Where metrics are served without `--metrics-addr` (9464: the port Prometheus' port
/// allocation list gives OpenTelemetry's Prometheus exporter, free on most hosts).
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";

/// `--metrics-addr`: IP:PORT or `off`.
pub fn parse_metrics_addr(value: &str) -> Result<MetricsAddr, String> {
    if value == "off" {
        return Ok(MetricsAddr::Off);
    }
    value.parse().map(MetricsAddr::At).map_err(|_| {
        format!("expected IP:PORT (such as {DEFAULT_METRICS_ADDR} or [::1]:9464), or `off` to serve no metrics")
    })
}

/// Starts the metrics endpoint. An address given with `--metrics-addr` that cannot be
/// bound is an error (exit 2); the default one in use (another run serving there: runs
/// may stack on one host) or missing (no loopback) only means this run serves none, and
/// says so: a run that did not ask for metrics does not fail for them.
fn serve_metrics(addr: Option<MetricsAddr>, metrics: &Metrics) -> Result<Option<MetricsServer>> {
    let (addr, explicit) = match addr {
        Some(MetricsAddr::Off) => return Ok(None),
        Some(MetricsAddr::At(addr)) => (addr, true),
        None => (DEFAULT_METRICS_ADDR.parse().expect("a valid address"), false),
    };
    match MetricsServer::start(addr, metrics.registry()) {
        Ok(server) => Ok(Some(server)),
        Err(e) if !explicit => {
            let why = match e.kind() {
                std::io::ErrorKind::AddrInUse => format!("{addr} is in use (another chaos-ebpf run?)"),
                _ => format!("cannot listen on {addr}: {e}"),
            };
            output::err(&format!(
                "chaos-ebpf: serving no metrics: {why}; pass --metrics-addr IP:PORT to serve them elsewhere"
            ));
            Ok(None)
        }
        Err(e) => {
            let fix = match e.kind() {
                std::io::ErrorKind::AddrInUse => format!(
                    "another process listens there (`ss -ltnp 'sport = :{}'` shows which): pass --metrics-addr with a free port, or --metrics-addr off",
                    addr.port()
                ),
                std::io::ErrorKind::AddrNotAvailable => {
                    format!("that address is not on this host: pass --metrics-addr {DEFAULT_METRICS_ADDR}, or off")
                }
                _ => "pass another --metrics-addr, or --metrics-addr off".into(),
            };
            Err(chaos_datapath::Error::unsupported(format!("cannot serve metrics on {addr}: {e}"), fix).into())
        }
    }
}
