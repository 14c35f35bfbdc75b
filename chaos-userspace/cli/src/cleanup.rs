//! `chaos-ebpf cleanup`: the datapath's crash sweep, the lab's leftover namespaces (when
//! no run is alive), dead runs' container actions undone, a verification look, and the
//! report; traced as a `cleanup` span (written to `--run-dir DIR`'s spans.jsonl when
//! given).

use std::path::PathBuf;

use anyhow::Result;
use chaos_datapath::{error::require_root, sweep};

use crate::{exit, output};

pub fn run(force: bool, json: bool, run_dir: Option<PathBuf>) -> Result<i32> {
    require_root("cleanup")?;
    if let Some(dir) = run_dir {
        crate::run_dir::create(Some(dir))?;
    }
    let span = tracing::info_span!(
        "cleanup",
        force,
        removed = tracing::field::Empty,
        remaining = tracing::field::Empty,
        live_runs = tracing::field::Empty,
        clean = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        otel.status_message = tracing::field::Empty,
    );
    let mut report = sweep::sweep(force);
    if report.live_runs == 0 {
        chaos_lab::remove_leftovers(&mut report.removed, &mut report.remaining);
        // A crashed run's lab actions: a paused member thawed, a swapped certificate restored.
        match chaos_lab::control::undo_all(std::path::Path::new(chaos_lab::cluster::STATE_DIR)) {
            Ok(undone) => report.removed.extend(undone.into_iter().map(|line| format!("cluster lab: {line}"))),
            Err(e) => report.remaining.push(format!("cluster lab member control: {e:#}")),
        }
    }
    // A crashed run's container actions: a container still paused unpaused, one killed
    // with `restart: true` started. By each record's own lock, whatever other runs live;
    // a live run's are never touched, `--force` or not (its step's end undoes them).
    let containers = chaos_engine::container_undo::undo_dead_runs();
    report.removed.extend(containers.removed);
    report.remaining.extend(containers.remaining);
    report.active.extend(containers.active);
    sweep::verify(force, &mut report);
    span.record("removed", report.removed.len() as u64);
    span.record("remaining", report.remaining.len() as u64);
    span.record("live_runs", report.live_runs as u64);
    span.record("clean", report.clean);
    if report.clean {
        span.record("otel.status_code", "ok");
    } else {
        span.record("otel.status_code", "error");
        span.record("otel.status_message", report.remaining.join("; ").as_str());
    }
    drop(span);
    if json {
        output::out(&serde_json::to_string_pretty(&report)?);
    } else {
        if report.removed.is_empty() {
            output::out("nothing to remove");
        }
        for r in &report.removed {
            output::out(&format!("removed {r}"));
        }
        for a in &report.active {
            output::out(&format!("left alone: {a}"));
        }
        for r in &report.remaining {
            output::out(&format!("NOT removed: {r}"));
        }
        output::out(if report.clean { "clean" } else { "NOT clean" });
    }
    Ok(if report.clean { 0 } else { exit::FAILED })
}
