//! `cargo xtask cluster up | down | status`: the single-node Kubernetes test cluster
//! (docs/kubernetes.md). The recipe is deploy/kubernetes/cluster.sh, a script so that it
//! reads as the shell commands it runs (as deploy/compose/stack.sh does for the compose
//! stack); this runs it, passes its output through (each phase with its time), and exits
//! with its code (2: something is in the way or missing, nothing changed).
//!
//! Hold the kernel tests' lock around a whole `up ... down` session (the kernel tests
//! compare the host's iptables and interfaces before and after):
//! `flock /tmp/chaos-kernel-tests.lock bash -c 'cargo xtask cluster up && ...; cargo xtask cluster down'`.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result};

/// The script that brings the cluster up and down.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/cluster.sh")
}

pub fn run(args: &[String]) -> Result<()> {
    if !matches!(args.first().map(String::as_str), Some("up" | "down" | "status" | "build")) {
        eprintln!("usage: cargo xtask cluster up | down | status | build | test   (docs/kubernetes.md)");
        std::process::exit(2);
    }
    let started = Instant::now();
    let status = Command::new("bash")
        .arg(script())
        .args(args)
        .status()
        .with_context(|| format!("running bash {}", script().display()))?;
    let code = status.code().unwrap_or(1);
    eprintln!(
        "xtask: cluster {}: {} in {:.0} s",
        args.join(" "),
        if code == 0 { "done" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    );
    std::process::exit(code);
}

/// Builds (or finds cached) the cluster's binaries and images, as `cluster build`.
pub fn build() -> Result<()> {
    let started = Instant::now();
    let status = Command::new("bash")
        .arg(script())
        .arg("build")
        .status()
        .with_context(|| format!("running bash {}", script().display()))?;
    anyhow::ensure!(status.success(), "cluster build failed ({status})");
    eprintln!("xtask: Kubernetes binaries ready in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}
